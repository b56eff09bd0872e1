"""Prometheus ``/metrics``: the supervisor's latest :class:`~engine.observe.metrics.Snapshot`, as metric families.

There is one source of truth: the supervisor hands each snapshot it takes (the one the dashboard
draws and the report is written from) to :meth:`MetricsServer.publish`; at scrape time
:class:`SnapshotCollector` turns the latest one into metric families. Nothing is counted twice
and nothing here can drift from report.json. The HTTP server is ``prometheus_client``'s, in a
daemon thread of the supervisor; it only ever reads an immutable snapshot.

Names follow the Prometheus conventions: ``_total`` counters, base units (``_seconds``,
``_bytes``), a label per dimension. Per-stream families carry ``stream``; the totals over the
streams are ``sum without (stream) (...)``, so no series is ever counted twice by a ``sum``.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from engine.core.errors import ConfigError
from engine.observe.metrics import ALL, BUCKETS_MS, DEFAULT_STREAM, Snapshot, StageRow, StreamRow

STATES = ("starting", "running", "finished", "interrupted", "failed")


def stream_rows(snap: Snapshot) -> tuple[StreamRow, ...]:
    """The snapshot's streams; one made of the totals for a snapshot without stream rows."""
    if snap.streams:
        return snap.streams
    t = snap.totals
    return (StreamRow(name=DEFAULT_STREAM, uri="", kind="", state=snap.state, frames_in=t.frames_in,
                      frames_out=t.frames_out, errors=t.errors, drops=t.drops, in_flight=t.in_flight,
                      fps=t.fps, avg_fps=t.avg_fps, reconnects=t.reconnects, duplicates=t.duplicates,
                      latency=snap.stage("end_to_end")),)


def _histogram(family: HistogramMetricFamily, labels: list[str], row: StageRow) -> None:
    buckets = [(f"{b / 1000:g}", n) for b, n in zip(BUCKETS_MS, row.buckets)]
    family.add_metric(labels, buckets + [("+Inf", row.count)], row.sum_ms / 1000)


class SnapshotCollector(Collector):
    """Metric families from the latest published snapshot (nothing before the first one)."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the one scrapes read (a reference swap: safe from any thread)."""
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        if snap is None:
            return
        yield StateSetMetricFamily("ovstream_state", "Run state",
                                   {s: s == snap.state for s in dict.fromkeys((*STATES, snap.state))})
        yield GaugeMetricFamily("ovstream_run_seconds", "Seconds since the stream started",
                                value=snap.elapsed_s)
        yield from self._frames(snap)
        yield from self._latency(snap)
        yield from self._devices(snap)
        yield from self._processes(snap)
        yield from self._queues_and_sinks(snap)
        yield from self._analytics(snap)

    @staticmethod
    def _frames(snap: Snapshot) -> Iterator[Metric]:
        t = snap.totals
        read = CounterMetricFamily("ovstream_frames_read", "Frames taken from the source",
                                   labels=["stream"])
        done = CounterMetricFamily("ovstream_frames", "Frames finished, by outcome: ok (a result), "
                                   "error (an error record), drop (dropped by a live source)",
                                   labels=["stream", "outcome"])
        in_flight = GaugeMetricFamily("ovstream_frames_in_flight", "Frames read but not finished",
                                      labels=["stream"])
        fps = GaugeMetricFamily("ovstream_frames_per_second",
                                "Frames finished per second over the last seconds", labels=["stream"])
        state = GaugeMetricFamily("ovstream_stream_state", "1 for the stream's current state",
                                  labels=["stream", "state"])
        latency = HistogramMetricFamily("ovstream_stream_latency_seconds",
                                        "End-to-end latency of each stream's frames", labels=["stream"])
        duplicates = CounterMetricFamily("ovstream_frames_duplicate", "Results of frames already written "
                                         "(after a restart), not written again", labels=["stream"])
        reconnects = CounterMetricFamily("ovstream_source_reconnects",
                                         "Times a live source was lost and re-opened", labels=["stream"])
        for s in stream_rows(snap):
            duplicates.add_metric([s.name], s.duplicates)
            reconnects.add_metric([s.name], s.reconnects)
            read.add_metric([s.name], s.frames_in)
            for outcome, value in (("ok", s.frames_out), ("error", s.errors), ("drop", s.drops)):
                done.add_metric([s.name, outcome], value)
            in_flight.add_metric([s.name], s.in_flight)
            fps.add_metric([s.name], s.fps)
            if s.state:
                state.add_metric([s.name, s.state], 1)
            if s.latency is not None and s.latency.buckets:
                _histogram(latency, [s.name], s.latency)
        yield from (read, done, in_flight, fps, state, latency, duplicates, reconnects)
        yield GaugeMetricFamily("ovstream_average_frames_per_second",
                                "Frames finished per second since the first frame", value=t.avg_fps)

    @staticmethod
    def _latency(snap: Snapshot) -> Iterator[Metric]:
        overall = HistogramMetricFamily("ovstream_stage_latency_seconds",
                                        "Latency of each pipeline stage", labels=["stage"])
        device = HistogramMetricFamily("ovstream_device_stage_latency_seconds",
                                       "Latency of each stage, per inference device",
                                       labels=["device", "stage"])
        for row in snap.stages:
            if not row.buckets:
                continue                    # a report from before buckets were recorded
            if row.scope == ALL:
                _histogram(overall, [row.stage], row)
            elif "#" not in row.scope:      # a device; its workers ("CPU#0") sum up to it
                _histogram(device, [row.scope, row.stage], row)
        yield from (overall, device)

    @staticmethod
    def _devices(snap: Snapshot) -> Iterator[Metric]:
        labels = ["device", "worker"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "frames": CounterMetricFamily("ovstream_device_frames", "Frames inferred", labels=labels),
            "batches": CounterMetricFamily("ovstream_device_batches", "Batches inferred", labels=labels),
            "errors": CounterMetricFamily("ovstream_device_errors", "Frames that failed inference",
                                          labels=labels),
            "in_flight": GaugeMetricFamily("ovstream_device_requests_in_flight",
                                           "Infer requests running now", labels=labels),
            "nireq": GaugeMetricFamily("ovstream_device_requests",
                                       "Infer requests of the worker (its nireq)", labels=labels),
            "fps": GaugeMetricFamily("ovstream_device_frames_per_second",
                                     "Frames inferred per second over the last seconds", labels=labels),
            "alive": GaugeMetricFamily("ovstream_device_up", "1 while the worker process is alive",
                                       labels=labels),
        }
        for d in snap.devices:
            for key, family in families.items():
                family.add_metric([d.device, d.label], float(getattr(d, key)))
        yield from families.values()

    @staticmethod
    def _processes(snap: Snapshot) -> Iterator[Metric]:
        labels = ["process", "role"]
        cpu = CounterMetricFamily("ovstream_process_cpu_seconds",
                                  "CPU seconds of the process's current instance", labels=labels)
        rss = GaugeMetricFamily("ovstream_process_resident_memory_bytes", "Resident memory",
                                labels=labels)
        up = GaugeMetricFamily("ovstream_process_up", "1 while the process is alive", labels=labels)
        restarts = CounterMetricFamily("ovstream_process_restarts", "Times the process was restarted",
                                       labels=labels)
        for p in snap.processes:
            key = [p.name, p.role]
            if p.cpu_s is not None:
                cpu.add_metric(key, p.cpu_s)
            if p.rss_mib is not None:
                rss.add_metric(key, p.rss_mib * 2**20)
            up.add_metric(key, float(p.alive))
            restarts.add_metric(key, p.restarts)
        yield from (cpu, rss, up, restarts)

    @staticmethod
    def _queues_and_sinks(snap: Snapshot) -> Iterator[Metric]:
        depth = GaugeMetricFamily("ovstream_queue_depth", "Items waiting in a queue between stages",
                                  labels=["queue", "unit"])
        capacity = GaugeMetricFamily("ovstream_queue_capacity", "Size of a bounded queue",
                                     labels=["queue", "unit"])
        for e in snap.edges:
            depth.add_metric([e.name, e.unit], e.depth)
            if e.capacity is not None:
                capacity.add_metric([e.name, e.unit], e.capacity)
        records = CounterMetricFamily("ovstream_sink_records", "Records a delivering sink (MQTT) "
                                      "published (confirmed) or dropped", labels=["sink", "process", "outcome"])
        buffered = GaugeMetricFamily("ovstream_sink_records_buffered",
                                     "Records waiting to be sent or confirmed", labels=["sink", "process"])
        connected = GaugeMetricFamily("ovstream_sink_connected", "1 while connected to the broker",
                                      labels=["sink", "process"])
        for k in snap.sinks:
            records.add_metric([k.name, k.process, "published"], k.published)
            records.add_metric([k.name, k.process, "dropped"], k.dropped)
            buffered.add_metric([k.name, k.process], k.buffered)
            connected.add_metric([k.name, k.process], float(k.connected))
        yield from (depth, capacity, records, buffered, connected)

    @staticmethod
    def _analytics(snap: Snapshot) -> Iterator[Metric]:
        """``[tracking]`` lines and zones: crossings and entries since the stream's start, objects in a zone now."""
        crossings = CounterMetricFamily("ovstream_line_crossings", "Tracked objects that crossed a line",
                                        labels=["stream", "line", "direction", "class"])
        objects = GaugeMetricFamily("ovstream_zone_objects", "Tracked objects in a zone now",
                                    labels=["stream", "zone", "class"])
        entries = CounterMetricFamily("ovstream_zone_entries", "Tracked objects that entered a zone",
                                      labels=["stream", "zone", "class"])
        for a in snap.analytics:
            if a.kind == "crossings":
                crossings.add_metric([a.stream, a.where, a.direction, a.label], a.value)
            elif a.kind == "zone_objects":
                objects.add_metric([a.stream, a.where, a.label], a.value)
            else:
                entries.add_metric([a.stream, a.where, a.label], a.value)
        yield from (crossings, objects, entries)


class MetricsServer:
    """``/metrics`` on ``host:port`` (port 0: any free port) from a private registry."""

    def __init__(self, host: str, port: int) -> None:
        self.collector = SnapshotCollector()
        registry = CollectorRegistry()
        registry.register(self.collector)
        try:
            self._httpd, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(f"[metrics] cannot serve on {host}:{port}: {exc.strerror or exc}") from None
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def publish(self, snapshot: Snapshot) -> None:
        self.collector.publish(snapshot)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=2)


__all__ = ["MetricsServer", "SnapshotCollector", "stream_rows"]
