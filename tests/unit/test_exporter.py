"""Prometheus export and the MQTT sink, without a pipeline: exact histogram buckets, metric
families from a snapshot (and from its report), the HTTP endpoint, the bounded buffer, the sink's
figures on the dashboard, the replay after a postprocessor restart."""
from __future__ import annotations

import io
import socket
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from rich.console import Console

from engine.config import MqttConfig
from engine.core.errors import ConfigError
from engine.core.results import FrameResult
from engine.io.mqtt import MqttSink
from engine.io.sinks import JsonlSink
from engine.observe.dashboard import format_plain, render_summary
from engine.observe.exporter import MetricsServer, SnapshotCollector, stream_rows
from engine.observe.metrics import BUCKETS_MS, Histogram, MetricsAggregator, Snapshot, StreamRow
from engine.protocol.messages import StatsMsg
from tests import servers
from tests.unit.test_metrics import decoder, worker
from workers.postprocessor import replay


def test_histogram_buckets_are_exact_counts():
    data = np.random.default_rng(3).lognormal(1.5, 1.2, 5_000)
    data = np.concatenate([data, BUCKETS_MS])                  # values on a bound count as <= bound
    h, one = Histogram(), Histogram()
    h.add_many(data)
    for v in data:
        one.add(float(v))
    expected = tuple(int((data <= b).sum()) for b in BUCKETS_MS)
    assert h.cumulative() == one.cumulative() == expected
    a, b = Histogram(), Histogram()
    a.add_many(data[:1000])
    b.add_many(data[1000:])
    assert a.merge(b).cumulative() == expected


def _snapshot() -> Snapshot:
    agg = MetricsAggregator(sample_processes=False)
    agg.add_stream("cam", "data/cam", "file")
    agg.start(now=0.0)
    agg.set_stream_acks(0, 40, 1, now=0.4)              # written before the decoder's last heartbeat
    dec = decoder(50, drops=2, lat=[2.0, 3.0])
    dec.gauges["next_frame_id@0"] = 48
    dec.counters["drops@0"] = 2
    dec.counters["reconnects@0"] = 1
    agg.ingest(dec, now=0.5)
    agg.ingest(worker(0, 40, lat=[4.0, 6.0, 30.0], in_flight=3), now=0.6)
    mqtt = StatsMsg(process="postprocessor", role="postprocessor", pid=301,
                    counters={"results": 40, "errors": 1, "duplicates": 0, "mqtt_published": 38,
                              "mqtt_dropped": 2},
                    gauges={"reorder": 0, "mqtt_buffered": 1, "mqtt_connected": 1, "cpu_s": 1.25},
                    latency_ms={"end_to_end": [9.0, 12.0, 700.0], "end_to_end@0": [9.0, 12.0, 700.0]})
    agg.ingest(mqtt, now=0.7)
    return agg.snapshot(now=1.0)


def _families(collector: SnapshotCollector) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_collector_turns_the_snapshot_into_conventional_families():
    collector = SnapshotCollector()
    assert _families(collector) == {}                          # nothing before the first snapshot
    snap = _snapshot()
    collector.publish(snap)
    m = _families(collector)
    assert m[("ovstream_frames_read_total", (("stream", "cam"),))] == 50     # 48 ids + 2 drops
    assert m[("ovstream_frames_total", (("outcome", "ok"), ("stream", "cam")))] == 40
    assert m[("ovstream_frames_total", (("outcome", "error"), ("stream", "cam")))] == 1
    assert m[("ovstream_frames_total", (("outcome", "drop"), ("stream", "cam")))] == 2
    assert m[("ovstream_frames_in_flight", (("stream", "cam"),))] == 7
    assert m[("ovstream_source_reconnects_total", (("stream", "cam"),))] == 1
    assert m[("ovstream_frames_duplicate_total", (("stream", "cam"),))] == 0
    assert m[("ovstream_state", (("ovstream_state", "running"),))] == 1
    e2e = (("stage", "end_to_end"),)
    assert m[("ovstream_stage_latency_seconds_count", e2e)] == 3
    assert m[("ovstream_stage_latency_seconds_sum", e2e)] == pytest.approx(0.721)
    assert m[("ovstream_stage_latency_seconds_bucket", (("le", "0.01"), *e2e))] == 1
    assert m[("ovstream_stage_latency_seconds_bucket", (("le", "0.5"), *e2e))] == 2
    assert m[("ovstream_stage_latency_seconds_bucket", (("le", "+Inf"), *e2e))] == 3
    cpu = (("device", "CPU"), ("stage", "inference"))
    assert m[("ovstream_device_stage_latency_seconds_count", cpu)] == 3
    worker0 = (("device", "CPU"), ("worker", "CPU#0"))
    assert m[("ovstream_device_requests_in_flight", worker0)] == 3
    assert m[("ovstream_device_requests", worker0)] == 4
    assert m[("ovstream_device_frames_total", worker0)] == 40
    post_labels = (("process", "postprocessor"), ("role", "postprocessor"))
    assert m[("ovstream_process_cpu_seconds_total", post_labels)] == 1.25
    assert m[("ovstream_process_restarts_total", post_labels)] == 0
    sink = (("process", "postprocessor"), ("sink", "mqtt"))
    assert m[("ovstream_sink_records_total", (("outcome", "dropped"), *sink))] == 2
    assert m[("ovstream_sink_records_total", (("outcome", "published"), *sink))] == 38
    assert m[("ovstream_sink_records_buffered", sink)] == 1 and m[("ovstream_sink_connected", sink)] == 1
    # the report holds the same data: a collector over the report exports the same series
    again = SnapshotCollector()
    again.publish(Snapshot.from_dict(snap.to_dict()))
    assert _families(again) == m


def test_per_stream_families_and_a_snapshot_without_streams():
    snap = _snapshot()
    e2e = snap.stage("end_to_end")
    rows = (StreamRow("cam1", "rtsp://cam1", "live", "live", 9, 7, 1, 1, 0, 3.0, 2.5, latency=e2e),
            StreamRow("cam2", "clip.mp4", "file", "ended", 4, 4, 0, 0, 0, 0.0, 1.0))
    collector = SnapshotCollector()
    collector.publish(replace(snap, streams=rows))
    m = _families(collector)
    assert m[("ovstream_frames_total", (("outcome", "ok"), ("stream", "cam1")))] == 7
    assert m[("ovstream_frames_read_total", (("stream", "cam2"),))] == 4
    assert m[("ovstream_stream_state", (("state", "live"), ("stream", "cam1")))] == 1
    assert m[("ovstream_stream_latency_seconds_count", (("stream", "cam1"),))] == e2e.count
    assert ("ovstream_stream_latency_seconds_count", (("stream", "cam2"),)) not in m
    (single,) = stream_rows(replace(snap, streams=()))       # e.g. a report from before streams
    assert (single.name, single.frames_in, single.frames_out, single.latency) == ("default", 50, 40, e2e)


def test_server_serves_metrics_and_a_busy_port_is_one_clear_error():
    server = MetricsServer("127.0.0.1", 0)
    try:
        server.publish(_snapshot())
        with urllib.request.urlopen(server.url, timeout=5) as response:
            text = response.read().decode()
        assert 'ovstream_frames_total{outcome="ok",stream="cam"} 40.0' in text
        with pytest.raises(ConfigError, match=r"\[metrics\] cannot serve on 127.0.0.1:\d+"):
            MetricsServer("127.0.0.1", server.port)
    finally:
        server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mqtt_buffer_is_bounded_and_drops_the_oldest_while_the_broker_is_away():
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=_closed_port(), buffer=10, flush_timeout_s=0.2))
    try:
        for i in range(30):
            result = FrameResult("", i, "clip.mp4", i, detections=())     # no stream name: the default stream
            sink.write(result, None, result.to_json())
        assert sink.counters() == {"mqtt_published": 0, "mqtt_dropped": 20}
        # the oldest 20 are given up: a restarted postprocessor would publish again from id 20
        assert sink.gauges() == {"mqtt_buffered": 10, "mqtt_connected": 0, "mqtt_replay_from@0": 20}
    finally:
        sink.close()
    assert sink.counters() == {"mqtt_published": 0, "mqtt_dropped": 30}      # unsent at close
    assert sink.gauges()["mqtt_buffered"] == 0


def test_mqtt_topic_carries_the_stream_name():
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=_closed_port(), topic="site/{stream}/det",
                               flush_timeout_s=0))
    try:
        assert sink.topic("default") == "site/default/det" and sink.topic("cam 2") == "site/cam 2/det"
    finally:
        sink.close()


def test_dashboard_and_summary_show_what_the_sink_delivered():
    snap = _snapshot()
    assert "mqtt published 38  dropped 2  buffered 1" in format_plain(snap)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_summary(snap.to_dict()))
    assert "mqtt published 38  dropped 2" in console.export_text()


def test_replay_hands_the_records_from_the_watermark_on_in_order(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [FrameResult("a", i, "clip.mp4", i, detections=()).to_json() for i in range(6)]
    path.write_text("\n".join(lines[:3] + ["{torn"] + lines[3:]) + "\n", encoding="utf-8")

    class Collect(JsonlSink):
        replays = True

    sink = Collect(tmp_path / "copy.jsonl")
    assert replay(path, {"a": 2}, [sink]) == 4
    sink.close()
    assert (tmp_path / "copy.jsonl").read_text(encoding="utf-8").splitlines() == lines[2:]
    assert replay(tmp_path / "missing.jsonl", {}, [sink]) == 0


def test_a_missing_broker_fails_the_tests_in_ci_and_skips_them_elsewhere(monkeypatch):
    monkeypatch.setattr(servers.shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        servers.mosquitto_binary()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        servers.mosquitto_binary()


def test_mqtt_replay_marks_are_per_stream():
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=_closed_port(), buffer=3, flush_timeout_s=0))
    try:
        for stream, frame_id in (("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)):
            sink.write(FrameResult(stream, frame_id, "clip.mp4", frame_id, detections=()), None)
        assert sink.replay_from() == {"a": 1, "b": 1}     # a0 and b0 were pushed out of the buffer
    finally:
        sink.close()
    assert sink.replay_from() == {"a": 3, "b": 2}         # closed: the rest counted as dropped
