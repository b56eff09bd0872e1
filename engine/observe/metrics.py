"""Run metrics: latency samples in each child, aggregation and frame accounting in the supervisor.

Children keep a :class:`LatencyRecorder` and send its bounded :meth:`~LatencyRecorder.drain` in
every :class:`~engine.protocol.messages.StatsMsg`. The supervisor feeds each message to one
:class:`MetricsAggregator` and asks it for an immutable :class:`Snapshot`, which the dashboard
draws and :meth:`Snapshot.to_dict` writes as the run report. Nothing here knows about rich.

Frame accounting, per stream and overall (exact, shown live and checked at exit)::

    in  = frame ids the stream's decoder produced + its drops
    out = frames written as results      (acknowledged by the postprocessor; no duplicates)
    errors = error records written       (whatever stage failed: a decode error reaches the
                                          sinks as an error record, so it is counted once)
    drops = live frames dropped under backpressure (they never reach the sinks)
    in_flight = in - out - errors - drops
    balanced  = in == out + errors + drops

The decoder reports its count every heartbeat while acks arrive continuously, so comparing the
latest of each would show frames written that were "never read" and ``in_flight`` 0. Each
stream's accounting is therefore a consistent cut: the decoder's count together with the acks
the supervisor had at the moment that count arrived. It lags by at most one heartbeat, its
``in_flight`` is real, and it becomes final when the stream or the run has ended (then the last
figures of each, the frames still in flight at a stop included).

Per-stream figures travel in the same counters, gauges and latency maps as the process's own,
keyed ``name@stream`` (:func:`stream_key`, the stream's index). Counters in a StatsMsg are
cumulative per process *instance* (pid, generation); the aggregator sums the instances of a
process so totals stay monotone across restarts.
"""
from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psutil

from engine.protocol.messages import StatsMsg

ALL = ""                        # stage scope meaning "every process and device"
STREAM_STATES = ("starting", "running", "live", "reconnecting", "ended", "failed")
DEFAULT_STREAM = "default"      # the stream of a snapshot or record that names none
STAGE_ORDER = ("decode", "preprocess", "queue", "inference", "postprocess", "end_to_end")
REPORT_FORMAT = "ovstream-report/1"

# counter whose rate is a process's throughput (frames per second)
_THROUGHPUT = {
    "decoder": ("frames_read",),
    "preprocessor": ("frames",),
    "inference": ("frames",),
    "postprocessor": ("results", "errors"),
}
_ERROR_COUNTER = {"decoder": "decode_errors"}   # other roles: "errors"
_KEEP_INSTANCES = 16          # per process; older instances are folded into one base sum
# upper bounds (ms) of the coarse latency buckets exported with the report and to Prometheus: each
# histogram counts its samples in them exactly, beside the fine buckets its percentiles come from
BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
              5000.0, 10000.0)
_PROC_SAMPLE_S = 0.5          # psutil sampling period (cpu_percent interval)


# ---- per-stream keys ----------------------------------------------------------------------------

def stream_key(name: str, stream: int) -> str:
    """The counter/gauge/latency key of ``name`` for stream index ``stream``: ``name@stream``."""
    return f"{name}@{stream}"


ANALYTICS_KINDS = ("crossings", "zone_objects", "zone_entries")


def analytics_key(kind: str, where: str, direction: str, label: str, stream: int) -> str:
    """The postprocessor's gauge key of one count of ``[tracking]`` lines and zones (a count since the
    stream's start, rebuilt with the tracks after a restart: a gauge, so restarts never add it twice):
    ``kind|where|direction|label@stream``, ``kind`` one of :data:`ANALYTICS_KINDS`."""
    return stream_key("|".join((kind, where, direction, label)), stream)


def split_stream_key(key: str) -> tuple[str, int] | None:
    """``("name", stream)`` for a per-stream key, None for a process-wide one."""
    name, at, stream = key.rpartition("@")
    return (name, int(stream)) if at and stream.isdigit() else None


def stream_state_code(state: str) -> int:
    """A stream state as a number (gauges are numbers); see :data:`STREAM_STATES`."""
    return STREAM_STATES.index(state)


# ---- in each child ------------------------------------------------------------------------------

class LatencyRecorder:
    """Latency samples per stage since the last drain, bounded by reservoir sampling.

    At most ``max_samples`` samples per stage survive between two drains, each an unbiased pick
    from all recorded (Algorithm R), so a StatsMsg never grows without bound under high load.
    """

    def __init__(self, max_samples: int = 256, seed: int | None = None) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        self.max_samples = max_samples
        self._rng = random.Random(seed)
        self._samples: dict[str, list[float]] = {}
        self._seen: dict[str, int] = {}

    def record(self, stage: str, ms: float) -> None:
        """Add one sample (milliseconds) for ``stage``."""
        seen = self._seen.get(stage, 0) + 1
        self._seen[stage] = seen
        samples = self._samples.setdefault(stage, [])
        if len(samples) < self.max_samples:
            samples.append(float(ms))
        else:
            j = self._rng.randrange(seen)
            if j < self.max_samples:
                samples[j] = float(ms)

    def record_span(self, stage: str, start_ns: int, end_ns: int | None = None) -> None:
        """Add the time from ``start_ns`` to ``end_ns`` (default: now), ``time.monotonic_ns``."""
        end = time.monotonic_ns() if end_ns is None else end_ns
        self.record(stage, (end - start_ns) / 1e6)

    def drain(self) -> dict[str, list[float]]:
        """The samples gathered since the last drain (``StatsMsg.latency_ms``); then start anew."""
        out = {stage: samples for stage, samples in self._samples.items() if samples}
        self._samples = {}
        self._seen = {}
        return out


# ---- histogram ----------------------------------------------------------------------------------

class Histogram:
    """Fixed-memory latency histogram with log-spaced buckets.

    Bucket ``i`` spans ``[lo * growth**(i-1), lo * growth**i)``; a percentile is the geometric
    middle of its bucket, so its relative error is at most ``(growth - 1) / 2`` (1 % by default).
    Values below ``lo_ms`` or above ``hi_ms`` land in under/overflow buckets, reported as the exact
    min/max. Histograms with the same layout merge by adding their counts. Beside them it counts
    every sample exactly in the coarse :data:`BUCKETS_MS` (``value <= bound``, Prometheus ``le``
    semantics): :meth:`cumulative` is what the report and ``/metrics`` export.
    """

    __slots__ = ("lo_ms", "hi_ms", "growth", "_inv_log_g", "_n", "_counts", "_le", "count", "min",
                 "max", "total")

    def __init__(self, lo_ms: float = 0.01, hi_ms: float = 60_000.0, growth: float = 1.02) -> None:
        if not (0 < lo_ms < hi_ms) or growth <= 1.0:
            raise ValueError("need 0 < lo_ms < hi_ms and growth > 1")
        self.lo_ms, self.growth = lo_ms, growth
        self._inv_log_g = 1.0 / math.log(growth)
        self._n = math.ceil(math.log(hi_ms / lo_ms) * self._inv_log_g)
        self.hi_ms = lo_ms * growth ** self._n
        self._counts = np.zeros(self._n + 2, dtype=np.int64)   # [underflow, 1..n, overflow]
        self._le = np.zeros(len(BUCKETS_MS) + 1, dtype=np.int64)  # per BUCKETS_MS bound, then +Inf
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.total = 0.0

    @property
    def resolution(self) -> float:
        """Relative width of a bucket: percentiles are exact to within this fraction."""
        return self.growth - 1.0

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def _index(self, ms: float) -> int:
        if ms < self.lo_ms:
            return 0
        if ms >= self.hi_ms:
            return self._n + 1
        return min(int(math.log(ms / self.lo_ms) * self._inv_log_g) + 1, self._n)

    def add(self, ms: float) -> None:
        """Add one sample; NaN and infinities are ignored, negatives count as 0."""
        if not math.isfinite(ms):
            return
        ms = max(ms, 0.0)
        self._counts[self._index(ms)] += 1
        self._le[np.searchsorted(BUCKETS_MS, ms, side="left")] += 1
        self.count += 1
        self.total += ms
        self.min = min(self.min, ms)
        self.max = max(self.max, ms)

    def add_many(self, values: Iterable[float]) -> None:
        """Add many samples at once (vectorised)."""
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, float)
        arr = np.maximum(arr[np.isfinite(arr)], 0.0)
        if arr.size == 0:
            return
        idx = np.empty(arr.size, dtype=np.int64)
        under, over = arr < self.lo_ms, arr >= self.hi_ms
        mid = ~(under | over)
        idx[under], idx[over] = 0, self._n + 1
        idx[mid] = np.minimum(
            (np.log(arr[mid] / self.lo_ms) * self._inv_log_g).astype(np.int64) + 1, self._n)
        self._counts += np.bincount(idx, minlength=self._n + 2)
        self._le += np.bincount(np.searchsorted(BUCKETS_MS, arr, side="left"),
                                minlength=len(BUCKETS_MS) + 1)
        self.count += int(arr.size)
        self.total += float(arr.sum())
        self.min = min(self.min, float(arr.min()))
        self.max = max(self.max, float(arr.max()))

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s samples into this histogram (same layout); returns self."""
        if (other.lo_ms, other._n, other.growth) != (self.lo_ms, self._n, self.growth):
            raise ValueError("histograms with different bucket layouts cannot merge")
        self._counts += other._counts
        self._le += other._le
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def cumulative(self) -> tuple[int, ...]:
        """Samples ``<=`` each bound of :data:`BUCKETS_MS` (cumulative, exact; +Inf is ``count``)."""
        return tuple(int(v) for v in np.cumsum(self._le[:-1]))

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0..100) in ms, or None when empty."""
        if not self.count:
            return None
        if p <= 0:
            return self.min
        if p >= 100:
            return self.max
        rank = round(p / 100.0 * (self.count - 1))           # 0-based rank, as numpy's 'nearest'
        i = int(np.searchsorted(np.cumsum(self._counts), rank + 1))
        if i == 0:
            return self.min
        if i == self._n + 1:
            return self.max
        value = self.lo_ms * self.growth ** (i - 0.5)
        return min(max(value, self.min), self.max)


# ---- snapshot (plain data; the report format) --------------------------------------------------

@dataclass(frozen=True)
class StageRow:
    """Latency of one stage in one scope: ``""`` (all), a device ("CPU") or a worker ("CPU#0")."""

    stage: str
    scope: str
    count: int
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    avg_ms: float
    sum_ms: float = 0.0
    buckets: tuple[int, ...] = ()   # samples <= each bound of BUCKETS_MS (cumulative)

    def latency(self) -> dict[str, Any]:
        """benchmark_app words: median / avg / min / max (plus p95, p99, the sample count, the sum
        and the cumulative counts per bucket bound in ms, as Prometheus histograms have them)."""
        return {"count": self.count, "median": self.p50_ms, "avg": self.avg_ms,
                "min": self.min_ms, "max": self.max_ms, "p95": self.p95_ms, "p99": self.p99_ms,
                "sum": self.sum_ms,
                "buckets": {f"{b:g}": n for b, n in zip(BUCKETS_MS, self.buckets)}}

    @classmethod
    def from_latency(cls, stage: str, scope: str, v: dict[str, Any]) -> StageRow:
        """The row back from its :meth:`latency` dict (a report from before buckets has none)."""
        buckets = v.get("buckets")
        return cls(stage, scope, v["count"], v["min"], v["median"], v["p95"], v["p99"], v["max"], v["avg"],
                   v.get("sum", 0.0), tuple(buckets.get(f"{b:g}", 0) for b in BUCKETS_MS) if buckets else ())


def stage_row(stage: str, scope: str, h: Histogram) -> StageRow:
    """The figures of a non-empty histogram (ms, rounded to µs) with its exact buckets."""
    low, p50, p95, p99, high, mean, total = (round(v or 0.0, 3) for v in (
        h.min, h.percentile(50), h.percentile(95), h.percentile(99), h.max, h.mean, h.total))
    return StageRow(stage, scope, h.count, low, p50, p95, p99, high, mean, total, buckets=h.cumulative())


@dataclass(frozen=True)
class DeviceRow:
    """One inference worker: ``label`` is device#index (``CPU#0`` for process ``inference-0``)."""

    label: str
    worker: str
    device: str
    fps: float                  # over the sliding window
    avg_fps: float              # since the first frame
    frames: int
    batches: int
    errors: int
    in_flight: int
    nireq: int
    batch: int                  # frames per request
    alive: bool


@dataclass(frozen=True)
class ProcessRow:
    """One stage process: resources from psutil, totals summed over its restarts."""

    name: str
    role: str
    pid: int
    device: str
    alive: bool
    cpu_percent: float | None
    rss_mib: float | None
    restarts: int
    errors: int
    drops: int
    fps: float                  # its own throughput counter over the sliding window
    silent_s: float | None      # seconds since its last StatsMsg
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int | float] = field(default_factory=dict)
    cpu_s: float | None = None  # CPU seconds of its current instance (the stage's own count)


@dataclass(frozen=True)
class AnalyticsRow:
    """One count of a stream's lines and zones: ``crossings`` of line ``where`` in ``direction`` (in,
    out), ``zone_objects`` (now in zone ``where``) or ``zone_entries``, per object class ``label``."""

    stream: str
    kind: str
    where: str
    direction: str
    label: str
    value: int


@dataclass(frozen=True)
class SinkRow:
    """A sink that delivers records elsewhere (MQTT), as its process counts it.

    ``published``: records the broker confirmed (QoS 1) or that left the process (QoS 0);
    ``dropped``: records given up (buffer full while the broker was away, or unsent at close);
    ``buffered``: records waiting to be sent or confirmed now.
    """

    name: str
    process: str
    published: int
    dropped: int
    buffered: int
    connected: bool


@dataclass(frozen=True)
class EdgeRow:
    """Depth of one queue between stages (``capacity`` None when unbounded or unknown)."""

    name: str
    depth: int
    capacity: int | None
    unit: str


@dataclass(frozen=True)
class Totals:
    """Frame accounting (see the module docstring) and overall throughput."""

    frames_in: int
    frames_out: int
    errors: int
    drops: int
    duplicates: int
    in_flight: int              # in - out - errors - drops, never below 0
    balanced: bool              # in == out + errors + drops
    fps: float                  # out + errors per second over the sliding window
    avg_fps: float              # since the first frame (benchmark_app "Throughput")
    reconnects: int = 0         # live source: times the stream was lost and re-opened


@dataclass(frozen=True)
class StreamRow:
    """One stream: its state, accounting (a consistent cut, see the module docstring), rate and
    end-to-end latency. ``expected`` is the frames a file stream will produce (0: unknown/live)."""

    name: str
    uri: str
    kind: str                   # file | live
    state: str                  # one of STREAM_STATES
    frames_in: int
    frames_out: int
    errors: int
    drops: int
    in_flight: int
    fps: float                  # over the sliding window while running; the average once it or the run ended
    avg_fps: float              # from its first written frame to its last
    reconnects: int = 0
    duplicates: int = 0
    expected: int = 0
    latency: StageRow | None = None     # end_to_end

    @property
    def done(self) -> int:
        return self.frames_out + self.errors

    @property
    def balanced(self) -> bool:
        return self.frames_in == self.frames_out + self.errors + self.drops

    def to_dict(self) -> dict[str, Any]:
        latency = {}
        if self.latency is not None:
            latency = {"end_to_end": {"p50": self.latency.p50_ms, **self.latency.latency()}}
        return {"uri": self.uri, "kind": self.kind, "state": self.state, "in": self.frames_in,
                "out": self.frames_out, "errors": self.errors, "drops": self.drops,
                "in_flight": self.in_flight, "fps": self.fps, "avg_fps": self.avg_fps,
                "reconnects": self.reconnects, "duplicates": self.duplicates,
                "expected": self.expected, "latency_ms": latency}

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> StreamRow:
        e2e = d.get("latency_ms", {}).get("end_to_end")
        latency = StageRow.from_latency("end_to_end", name, e2e) if e2e else None
        return cls(name=name, uri=d.get("uri", ""), kind=d.get("kind", "file"), state=d.get("state", ""),
                   frames_in=d.get("in", 0), frames_out=d.get("out", 0), errors=d.get("errors", 0),
                   drops=d.get("drops", 0), in_flight=d.get("in_flight", 0), fps=d.get("fps", 0.0),
                   avg_fps=d.get("avg_fps", 0.0), reconnects=d.get("reconnects", 0),
                   duplicates=d.get("duplicates", 0), expected=d.get("expected", 0), latency=latency)


@dataclass(frozen=True)
class Snapshot:
    """Everything the dashboard draws and the run report holds, at one instant."""

    state: str
    elapsed_s: float
    timestamp: float            # unix time of the snapshot
    totals: Totals
    stages: tuple[StageRow, ...] = ()
    devices: tuple[DeviceRow, ...] = ()
    processes: tuple[ProcessRow, ...] = ()
    edges: tuple[EdgeRow, ...] = ()
    streams: tuple[StreamRow, ...] = ()
    sinks: tuple[SinkRow, ...] = ()
    analytics: tuple[AnalyticsRow, ...] = ()

    def stage(self, name: str, scope: str = ALL) -> StageRow | None:
        """The row of ``name`` in ``scope``, or None when it has no samples."""
        return next((r for r in self.stages if r.stage == name and r.scope == scope), None)

    @classmethod
    def from_dict(cls, report: dict[str, Any]) -> Snapshot:
        """Rebuild a snapshot from a run report (:meth:`to_dict`); unknown keys are ignored."""
        acc = report.get("accounting", {})
        totals = Totals(
            frames_in=acc.get("in", 0), frames_out=acc.get("out", 0), errors=acc.get("errors", 0),
            drops=acc.get("drops", 0), duplicates=acc.get("duplicates", 0),
            in_flight=acc.get("in_flight", 0), balanced=acc.get("balanced", False),
            fps=report.get("throughput_fps_recent", 0.0), avg_fps=report.get("throughput_fps", 0.0),
            reconnects=acc.get("reconnects", 0))
        scoped = [(ALL, report.get("latency_ms", {})),
                  *report.get("latency_ms_by_device", {}).items()]
        stages = tuple(StageRow.from_latency(stage, scope, v)
                       for scope, by_stage in scoped for stage, v in by_stage.items())
        devices = tuple(
            DeviceRow(label=d["name"], worker=d["worker"], device=d["device"],
                      fps=d.get("throughput_fps_recent", 0.0), avg_fps=d["throughput_fps"],
                      frames=d["frames"], batches=d.get("batches", 0), errors=d.get("errors", 0),
                      in_flight=d.get("in_flight", 0), nireq=d.get("nireq", 0),
                      batch=d.get("batch", 1), alive=d.get("alive", True))
            for d in report.get("devices", []))
        return cls(state=report.get("state", ""), elapsed_s=report.get("duration_s", 0.0),
                   timestamp=report.get("timestamp", 0.0), totals=totals,
                   stages=tuple(sorted(stages, key=_stage_order)), devices=devices,
                   processes=tuple(ProcessRow(**p) for p in report.get("processes", [])),
                   edges=tuple(EdgeRow(**e) for e in report.get("queues", [])),
                   streams=tuple(StreamRow.from_dict(name, d) for name, d in report.get("streams", {}).items()),
                   sinks=tuple(SinkRow(**k) for k in report.get("sinks", [])),
                   analytics=tuple(AnalyticsRow(**a) for a in report.get("analytics", [])))

    def to_dict(self) -> dict[str, Any]:
        """The run report (``report.json``): JSON-able, named like benchmark_app's figures."""
        t = self.totals
        by_scope: dict[str, dict[str, Any]] = {}
        for row in self.stages:
            if row.scope != ALL:
                by_scope.setdefault(row.scope, {})[row.stage] = row.latency()
        return {
            "format": REPORT_FORMAT,
            "state": self.state,
            "timestamp": self.timestamp,
            "duration_s": round(self.elapsed_s, 3),
            "throughput_fps": t.avg_fps,
            "throughput_fps_recent": t.fps,
            "accounting": {"in": t.frames_in, "out": t.frames_out, "errors": t.errors,
                       "drops": t.drops, "duplicates": t.duplicates, "in_flight": t.in_flight,
                       "reconnects": t.reconnects,
                       "balanced": t.balanced},
            "latency_ms": {r.stage: r.latency() for r in self.stages if r.scope == ALL},
            "latency_ms_by_device": by_scope,
            "devices": [{"name": d.label, "device": d.device, "worker": d.worker,
                         "throughput_fps": d.avg_fps, "throughput_fps_recent": d.fps,
                         "frames": d.frames, "batches": d.batches, "errors": d.errors,
                         "in_flight": d.in_flight, "nireq": d.nireq, "batch": d.batch, "alive": d.alive}
                        for d in self.devices],
            "processes": [asdict(p) for p in self.processes],
            "queues": [asdict(e) for e in self.edges],
            "streams": {r.name: r.to_dict() for r in self.streams},
            "sinks": [asdict(k) for k in self.sinks],
            "analytics": [asdict(a) for a in self.analytics],
        }


# ---- aggregator (in the supervisor) ------------------------------------------------------------

@dataclass
class _Proc:
    """What the aggregator keeps about one named process."""

    name: str
    role: str = ""
    device: str = ""
    pid: int = 0
    key: tuple[int, int, int] | None = None              # current (pid, generation, epoch)
    base: dict[str, int] = field(default_factory=dict)    # folded old instances
    inst: dict[tuple[int, int, int], dict[str, int]] = field(default_factory=dict)
    epochs: dict[tuple[int, int], int] = field(default_factory=dict)
    gauges: dict[str, int | float] = field(default_factory=dict)
    instances: int = 0
    restarts_noted: int = 0
    last_seen: float | None = None
    series: deque = field(default_factory=deque)         # (t, throughput total)
    ps: psutil.Process | None = None
    alive: bool = True
    cpu: float | None = None
    cpu_s: float | None = None
    rss: int | None = None

    def total(self, name: str) -> int:
        return self.base.get(name, 0) + sum(c.get(name, 0) for c in self.inst.values())

    def totals(self) -> dict[str, int]:
        names = set(self.base).union(*self.inst.values()) if self.inst else set(self.base)
        return {n: self.total(n) for n in sorted(names)}

    @property
    def restarts(self) -> int:
        return max(self.restarts_noted, self.instances - 1)


@dataclass
class _Stream:
    """What the aggregator keeps about one stream."""

    name: str
    uri: str = ""
    kind: str = "file"
    ok: int = 0                     # acked results / error records (the supervisor's ledger)
    err: int = 0
    ids: int = 0                    # decoder's high-water mark of frame ids produced (from ``first``)
    first: int = 0                  # the stream's first frame id in this run (``[source] start``)
    drops: int = 0
    cut: tuple[int, int, int, int] = (0, 0, 0, 0)   # (ids, drops, ok, err) at one instant
    state: str = "starting"
    ended: bool = False
    expected: int = 0
    reconnects: int = 0
    duplicates: int = 0
    series: deque = field(default_factory=deque)     # (t, ok + err)
    t_first: float | None = None
    t_last: float | None = None
    hist: Histogram = field(default_factory=Histogram)


def worker_label(device: str, process: str) -> str:
    """``CPU#0`` for device CPU and process ``inference-0``; the process name if it has no index."""
    suffix = process.rsplit("-", 1)[-1]
    return f"{device}#{suffix}" if suffix.isdigit() and device else process


class MetricsAggregator:
    """Turns the StatsMsg stream into totals, rates, histograms and a :class:`Snapshot`.

    Call :meth:`add_stream` for every stream of the run, :meth:`ingest` for every StatsMsg,
    :meth:`note_restart` when the supervisor restarts a process, :meth:`set_stream_acks` with
    the ledger's counts after the postprocessor's acks, :meth:`end_stream` when a stream has
    ended, :meth:`set_state` on state changes, and :meth:`snapshot` whenever the dashboard or
    the report needs figures. ``now`` arguments are ``time.monotonic()`` seconds (tests pass
    them explicitly).
    """

    def __init__(self, window_s: float = 2.0, sample_processes: bool = True) -> None:
        self.window_s = window_s
        self.sample_processes = sample_processes
        self._procs: dict[str, _Proc] = {}
        self._hists: dict[tuple[str, str], Histogram] = {}
        self._t0: float | None = None
        self._t_first: float | None = None         # first frame seen (or start())
        self._t_last_done: dict[str, float] = {}   # process → time its throughput last grew
        self._streams: list[_Stream] = []
        self._state: str | None = None             # None: "starting", then "running"
        self._last_sample: float | None = None

    # -- inputs --

    def start(self, now: float | None = None) -> None:
        """The stream starts now (the supervisor sent ``start``): the origin of elapsed and FPS."""
        now = time.monotonic() if now is None else now
        self._t0 = self._t_first = now

    def set_state(self, state: str) -> None:
        """Run state for the dashboard and report (finished, interrupted, failed, ...).

        Until set, the state is ``starting``, then ``running`` once the stream has started.
        """
        self._state = state

    def watch(self, name: str, pid: int, role: str = "") -> None:
        """Show a process that sends no stats (the supervisor itself) in the process rows."""
        proc = self._procs.setdefault(name, _Proc(name=name, role=role or name))
        if proc.pid != pid:
            proc.pid, proc.ps = pid, self._ps(pid)

    def note_ready(self, process: str, pid: int, info: dict | None = None) -> None:
        """A child finished its handshake (ReadyMsg): watch its pid before its first stats."""
        proc = self._procs.setdefault(process, _Proc(name=process))
        device = (info or {}).get("device")
        if isinstance(device, str) and device and not proc.device:
            proc.device = device
        if _int(pid) > 0 and proc.pid != pid:
            proc.pid, proc.ps = pid, self._ps(pid)

    def note_restart(self, process: str) -> None:
        """The supervisor restarted ``process`` (its next stats come from a fresh instance)."""
        self._procs.setdefault(process, _Proc(name=process)).restarts_noted += 1

    def add_stream(self, name: str, uri: str = "", kind: str = "file", first: int = 0) -> int:
        """Declare the next stream (index = declaration order; ``first``: its first frame id in this
        run, when it resumes where another run stopped); returns its index."""
        self._streams.append(_Stream(name, uri, kind, first=first))
        return len(self._streams) - 1

    def set_stream_acks(self, stream: int, ok: int, errors: int, now: float | None = None) -> None:
        """Cumulative distinct frames of ``stream`` written as results and as error records."""
        if not 0 <= stream < len(self._streams):
            return
        now = time.monotonic() if now is None else now
        st = self._streams[stream]
        if ok + errors > st.ok + st.err:
            st.t_first = now if st.t_first is None else st.t_first
            st.t_last = now
        st.ok, st.err = int(ok), int(errors)
        st.series.append((now, st.ok + st.err))
        while len(st.series) > 2 and st.series[1][0] <= now - self.window_s:
            st.series.popleft()

    def end_stream(self, stream: int) -> None:
        """Every frame of ``stream`` is written: its accounting is final."""
        if 0 <= stream < len(self._streams):
            self._streams[stream].ended = True

    def ingest(self, msg: StatsMsg, now: float | None = None) -> None:
        """Fold one StatsMsg in; malformed fields are ignored, never raised."""
        now = time.monotonic() if now is None else now
        if self._t0 is None:
            self._t0 = now
        proc = self._procs.setdefault(msg.process, _Proc(name=msg.process))
        proc.role = msg.role or proc.role
        proc.device = msg.device or proc.device
        proc.last_seen = now
        counters = {k: int(v) for k, v in _numbers(msg.counters).items()}
        self._fold_counters(proc, msg, counters)
        if self._key_of(proc, msg) == proc.key:
            proc.gauges = _numbers(msg.gauges)
            self._stream_figures(proc)
        self._record_latency(proc, msg.latency_ms)

        names = _THROUGHPUT.get(proc.role, ())
        done = sum(proc.total(n) for n in names)
        if done > (proc.series[-1][1] if proc.series else 0):
            self._t_last_done[proc.name] = now
        proc.series.append((now, done))
        if self._t_first is None and done > 0:
            self._t_first = now
        while len(proc.series) > 2 and proc.series[1][0] <= now - self.window_s:
            proc.series.popleft()

    # -- output --

    def snapshot(self, now: float | None = None) -> Snapshot:
        """An immutable view of everything at ``now``."""
        now = time.monotonic() if now is None else now
        self._sample_processes(now)
        procs = list(self._procs.values())

        def by_role(role: str) -> list[_Proc]:
            return [p for p in procs if p.role == role]

        post = by_role("postprocessor")
        streams = tuple(self._stream_row(st, now) for st in self._streams)
        if streams:
            frames_in, out, errors, drops = (sum(getattr(r, f) for r in streams)
                                             for f in ("frames_in", "frames_out", "errors", "drops"))
            in_flight = sum(r.in_flight for r in streams)
            done = sum(st.ok + st.err for st in self._streams)
        else:                                   # no streams declared: the processes' own counters
            drops = sum(p.total("drops") for p in by_role("decoder"))
            frames_in = sum(p.total("frames_read") for p in by_role("decoder"))
            out = sum(p.total("results") for p in post)
            errors = sum(p.total("errors") for p in post)
            in_flight = max(frames_in - out - errors - drops, 0)
            done = out + errors
        totals = Totals(
            frames_in=frames_in, frames_out=out, errors=errors, drops=drops,
            duplicates=sum(p.total("duplicates") for p in post), in_flight=in_flight,
            balanced=frames_in == out + errors + drops,
            fps=sum(self._rate(p, now) for p in post),
            avg_fps=self._avg_rate(post, done),
            reconnects=sum(p.total("reconnects") for p in by_role("decoder")))

        return Snapshot(
            state=self._state or ("starting" if self._t_first is None else "running"),
            elapsed_s=max(now - self._t0, 0.0) if self._t0 is not None else 0.0,
            timestamp=time.time(),
            totals=totals,
            stages=self._stage_rows(),
            devices=tuple(self._device_row(p, now) for p in by_role("inference")),
            processes=tuple(self._process_row(p, now) for p in procs),
            edges=tuple(e for p in procs for e in _edges(p)),
            streams=streams,
            sinks=tuple(k for p in post for k in _sinks(p)),
            analytics=tuple(a for p in post for a in self._analytics(p)),
        )

    # -- internals --

    def _key_of(self, proc: _Proc, msg: StatsMsg) -> tuple[int, int, int]:
        pg = (_int(msg.pid), _int(msg.generation))
        return (*pg, proc.epochs.get(pg, 0))

    def _fold_counters(self, proc: _Proc, msg: StatsMsg, counters: dict[str, int]) -> None:
        key = self._key_of(proc, msg)
        current = proc.inst.get(key)
        if current is not None and any(counters.get(k, v) < v for k, v in current.items()):
            # same pid and generation, but counters went back: a reset in place, a new instance
            proc.epochs[key[:2]] = key[2] + 1
            key, current = (*key[:2], key[2] + 1), None
        if current is None:
            proc.inst[key] = dict(counters)
            proc.instances += 1
            proc.key = key
            if proc.pid != key[0]:
                proc.pid, proc.ps = key[0], self._ps(key[0])
            while len(proc.inst) > _KEEP_INSTANCES:
                old = proc.inst.pop(next(iter(proc.inst)))
                for k, v in old.items():
                    proc.base[k] = proc.base.get(k, 0) + v
        else:
            for k, v in counters.items():
                current[k] = max(current.get(k, 0), v)

    def _stream_figures(self, proc: _Proc) -> None:
        """Per-stream gauges of a decoder (a new accounting cut) or counters of a postprocessor."""
        for key, value in proc.gauges.items():
            parsed = split_stream_key(key)
            if parsed is None or not 0 <= parsed[1] < len(self._streams):
                continue
            name, st = parsed[0], self._streams[parsed[1]]
            if proc.role == "decoder" and name == "next_frame_id":
                st.ids = max(st.ids, int(value) - st.first)
                st.drops = proc.total(stream_key("drops", parsed[1]))
                st.reconnects = proc.total(stream_key("reconnects", parsed[1]))
                st.cut = (st.ids, st.drops, st.ok, st.err)
            elif proc.role == "decoder" and name == "state" and 0 <= int(value) < len(STREAM_STATES):
                st.state = STREAM_STATES[int(value)]
            elif proc.role == "decoder" and name == "expected":
                st.expected = max(0, int(value) - st.first) if int(value) else 0
        if proc.role == "postprocessor":
            for i, st in enumerate(self._streams):
                st.duplicates = proc.total(stream_key("duplicates", i))

    def _analytics(self, proc: _Proc) -> list[AnalyticsRow]:
        """The line and zone counts a postprocessor reports (:func:`analytics_key`)."""
        rows = []
        for key, value in proc.gauges.items():
            parsed = split_stream_key(key)
            parts = parsed[0].split("|") if parsed else []
            if parsed is None or len(parts) != 4 or parts[0] not in ANALYTICS_KINDS:
                continue
            stream = self._streams[parsed[1]].name if 0 <= parsed[1] < len(self._streams) else DEFAULT_STREAM
            kind, where, direction, label = parts
            rows.append(AnalyticsRow(stream, kind, where, direction, label, int(value)))
        return rows

    def _stream_row(self, st: _Stream, now: float) -> StreamRow:
        if st.ended:        # final: what the decoder produced against what was written
            ids = max(st.ids, st.ok + st.err)
            frames_in, out, errors, drops, in_flight = ids + st.drops, st.ok, st.err, st.drops, 0
            state = "failed" if st.state == "failed" else "ended"
        else:               # running: the cut; once the run is over: the last figures of each
            ids, drops, out, errors = st.cut if self._state is None else (st.ids, st.drops, st.ok, st.err)
            frames_in = max(ids, out + errors) + drops
            in_flight = frames_in - out - errors - drops
            state = st.state
        s = st.series
        span = st.t_last - st.t_first if st.t_first is not None and st.t_last is not None else 0.0
        avg = (st.ok + st.err) / span if span > 0 else 0.0
        if st.ended or self._state is not None:     # the stream or the run is over: its average
            fps = avg
        elif len(s) >= 2 and now - s[-1][0] <= self.window_s and s[-1][0] > s[0][0]:
            fps = (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])
        else:
            fps = 0.0
        h = st.hist
        latency = stage_row("end_to_end", st.name, h) if h.count else None
        return StreamRow(name=st.name, uri=st.uri, kind=st.kind, state=state, frames_in=frames_in,
                         frames_out=out, errors=errors, drops=drops, in_flight=in_flight, fps=round(fps, 2),
                         avg_fps=round(avg, 2), reconnects=st.reconnects, duplicates=st.duplicates,
                         expected=st.expected, latency=latency)

    def _record_latency(self, proc: _Proc, latency: Any) -> None:
        if not isinstance(latency, dict):
            return
        scopes = [ALL]
        if proc.device:
            scopes += [proc.device, worker_label(proc.device, proc.name)]
        for stage, samples in latency.items():
            if not isinstance(stage, str) or not isinstance(samples, list):
                continue
            values = [float(v) for v in samples
                      if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not values:
                continue
            per_stream = split_stream_key(stage)
            if per_stream is not None:
                if 0 <= per_stream[1] < len(self._streams):
                    self._streams[per_stream[1]].hist.add_many(values)
                continue
            for scope in dict.fromkeys(scopes):
                self._hists.setdefault((stage, scope), Histogram()).add_many(values)

    def _rate(self, proc: _Proc, now: float) -> float:
        """Throughput over the window: (last - baseline) / time between them; 0 when stale."""
        s = proc.series
        if len(s) < 2 or now - s[-1][0] > self.window_s:
            return 0.0
        (t0, v0), (t1, v1) = s[0], s[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0

    def _avg_rate(self, procs: list[_Proc], done: int) -> float:
        ends = [self._t_last_done[p.name] for p in procs if p.name in self._t_last_done]
        if self._t_first is None or not ends or max(ends) <= self._t_first:
            return 0.0
        return done / (max(ends) - self._t_first)

    def _stage_rows(self) -> tuple[StageRow, ...]:
        rows = [stage_row(stage, scope, h) for (stage, scope), h in self._hists.items() if h.count]
        return tuple(sorted(rows, key=_stage_order))

    def _device_row(self, p: _Proc, now: float) -> DeviceRow:
        frames = p.total("frames")
        return DeviceRow(
            label=worker_label(p.device, p.name), worker=p.name, device=p.device,
            fps=self._rate(p, now), avg_fps=self._avg_rate([p], frames), frames=frames,
            batches=p.total("batches"), errors=p.total("errors"),
            in_flight=int(p.gauges.get("in_flight", 0)), nireq=int(p.gauges.get("nireq", 0)),
            batch=int(p.gauges.get("batch", 1)), alive=p.alive)

    def _process_row(self, p: _Proc, now: float) -> ProcessRow:
        return ProcessRow(
            name=p.name, role=p.role, pid=p.pid, device=p.device, alive=p.alive,
            cpu_percent=p.cpu, rss_mib=None if p.rss is None else round(p.rss / 2**20, 1),
            restarts=p.restarts, errors=p.total(_ERROR_COUNTER.get(p.role, "errors")),
            drops=p.total("drops"), fps=self._rate(p, now),
            silent_s=None if p.last_seen is None else max(now - p.last_seen, 0.0),
            counters={k: v for k, v in p.totals().items() if "@" not in k},
            gauges={k: v for k, v in p.gauges.items() if "@" not in k},
            cpu_s=p.gauges.get("cpu_s", p.cpu_s))

    def _ps(self, pid: int) -> psutil.Process | None:
        if not self.sample_processes or pid <= 0:
            return None
        try:
            ps = psutil.Process(pid)
            ps.cpu_percent(None)            # primes the interval for the next call
            return ps
        except (psutil.Error, OSError):
            return None

    def _sample_processes(self, now: float) -> None:
        if not self.sample_processes:
            return
        if self._last_sample is not None and 0 <= now - self._last_sample < _PROC_SAMPLE_S:
            return
        self._last_sample = now
        for p in self._procs.values():
            if p.ps is None:
                p.alive, p.cpu, p.rss = (p.pid > 0 and psutil.pid_exists(p.pid)), None, None
                continue
            try:
                with p.ps.oneshot():
                    if p.ps.status() == psutil.STATUS_ZOMBIE:
                        raise psutil.ZombieProcess(p.pid)
                    p.cpu = round(p.ps.cpu_percent(None), 1)
                    times = p.ps.cpu_times()
                    p.cpu_s = round(times.user + times.system, 3)
                    p.rss = p.ps.memory_info().rss
                p.alive = True
            except (psutil.Error, OSError):   # gone, zombie or not ours: dead; its last figures stay
                p.alive = False


def _stage_order(row: StageRow) -> tuple:
    """Pipeline order; within a stage: all, then devices, then workers."""
    rank = STAGE_ORDER.index(row.stage) if row.stage in STAGE_ORDER else len(STAGE_ORDER)
    return rank, row.stage, row.scope != ALL, "#" in row.scope, row.scope


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0


def _numbers(values: Any) -> dict[str, int | float]:
    """The finite numeric entries of a counters/gauges map (anything else is dropped)."""
    if not isinstance(values, dict):
        return {}
    return {k: v for k, v in values.items()
            if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def _sinks(p: _Proc) -> list[SinkRow]:
    """Delivering sinks a postprocessor reports: counters ``<sink>_published`` / ``_dropped``,
    gauges ``<sink>_buffered`` / ``_connected``."""
    names = [k[:-len("_published")] for k in p.totals() if k.endswith("_published")]
    return [SinkRow(name, p.name, p.total(f"{name}_published"), p.total(f"{name}_dropped"),
                    int(p.gauges.get(f"{name}_buffered", 0)),
                    bool(p.gauges.get(f"{name}_connected", 0)))
            for name in names]


def _edges(p: _Proc) -> list[EdgeRow]:
    """Queue depths a process reports in its gauges, by role."""
    g = {k: int(v) for k, v in p.gauges.items()}
    if p.role == "decoder" and "raw_slots" in g:
        return [EdgeRow(f"{p.name}→preprocessor", g["raw_slots"] - g.get("raw_free", 0),
                        g["raw_slots"], "raw slots")]
    if p.role == "preprocessor":
        rows = []
        if "input_slots" in g:
            rows.append(EdgeRow(f"{p.name}→inference", g["input_slots"] - g.get("input_free", 0),
                                g["input_slots"], "input slots"))
        if "ready_batches" in g:
            rows.append(EdgeRow(f"{p.name} ready", g["ready_batches"], None, "batches"))
        if "credits" in g:
            rows.append(EdgeRow(f"{p.name} credits", g["credits"], None, "credits"))
        return rows
    if p.role == "inference" and "nireq" in g:
        return [EdgeRow(f"{worker_label(p.device, p.name)} in flight", g.get("in_flight", 0),
                        g["nireq"], "requests")]
    if p.role == "postprocessor" and "reorder" in g:
        return [EdgeRow(f"{p.name} reorder", g["reorder"], None, "frames")]
    return []


__all__ = ["ALL", "ANALYTICS_KINDS", "AnalyticsRow", "BUCKETS_MS", "DEFAULT_STREAM", "STREAM_STATES", "DeviceRow",
           "EdgeRow", "Histogram",
           "LatencyRecorder", "MetricsAggregator", "ProcessRow", "SinkRow", "Snapshot", "StageRow", "StreamRow",
           "Totals", "analytics_key", "split_stream_key", "stream_key", "stream_state_code", "worker_label"]
