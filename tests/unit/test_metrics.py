"""engine.observe.metrics: histogram accuracy, bounded recorder, aggregation of synthetic stats streams."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from engine.observe.metrics import (
    Histogram,
    LatencyRecorder,
    MetricsAggregator,
    Snapshot,
    split_stream_key,
    stream_key,
    stream_state_code,
    worker_label,
)
from engine.protocol.messages import StatsMsg, decode


def decoder(read: int, *, drops: int = 0, errors: int = 0, pid: int = 101, gen: int = 0,
            free: int = 6, lat: list[float] | None = None) -> StatsMsg:
    return StatsMsg(process="decoder", role="decoder", pid=pid, generation=gen,
                    counters={"frames_read": read, "frames_emitted": read - drops,
                              "decode_errors": errors, "drops": drops, "reconnects": 0},
                    gauges={"raw_slots": 8, "raw_free": free},
                    latency_ms={"decode": lat or []})


def worker(i: int, frames: int, *, device: str = "CPU", pid: int | None = None,
           lat: list[float] | None = None, in_flight: int = 1) -> StatsMsg:
    return StatsMsg(process=f"inference-{i}", role="inference", pid=pid or 200 + i, device=device,
                    counters={"frames": frames, "batches": frames, "errors": 0},
                    gauges={"nireq": 4, "in_flight": in_flight},
                    latency_ms={"queue": [0.5], "inference": lat or []})


def post(results: int, errors: int = 0, *, pid: int = 301, gen: int = 0,
         e2e: list[float] | None = None) -> StatsMsg:
    return StatsMsg(process="postprocessor", role="postprocessor", pid=pid, generation=gen,
                    counters={"results": results, "errors": errors, "duplicates": 0},
                    gauges={"reorder": 2}, latency_ms={"end_to_end": e2e or []})


# ---- histogram ----

@pytest.mark.parametrize("p", [1, 10, 50, 90, 95, 99, 99.9])
def test_histogram_percentiles_match_numpy_within_resolution(p: float) -> None:
    rng = np.random.default_rng(7)
    data = rng.lognormal(mean=2.0, sigma=1.0, size=20_000)   # ~7 ms median, long tail
    h = Histogram()
    h.add_many(data)
    expected = float(np.percentile(data, p))
    assert abs(h.percentile(p) - expected) / expected <= h.resolution
    assert h.count == data.size
    assert h.max == pytest.approx(data.max()) and h.mean == pytest.approx(data.mean())


def test_histogram_add_equals_add_many_and_merge() -> None:
    data = np.random.default_rng(1).exponential(5.0, 2_000)
    one, many, a, b = Histogram(), Histogram(), Histogram(), Histogram()
    for v in data:
        one.add(float(v))
    many.add_many(data)
    a.add_many(data[:700])
    b.add_many(data[700:])
    a.merge(b)
    for p in (50, 95, 99):
        assert one.percentile(p) == many.percentile(p) == a.percentile(p)
    assert a.count == one.count == 2_000 and a.max == one.max and a.min == one.min
    with pytest.raises(ValueError):
        a.merge(Histogram(growth=1.05))


def test_histogram_edges() -> None:
    h = Histogram()
    assert h.percentile(50) is None and h.mean is None
    for v in (float("nan"), float("inf"), -3.0, 0.001, 1e9):
        h.add(v)
    assert h.count == 3 and h.min == 0.0 and h.max == 1e9
    assert h.percentile(0) == 0.0 and h.percentile(100) == 1e9
    assert h._counts.size < 1000                       # fixed memory


# ---- recorder ----

def test_recorder_reservoir_is_bounded_and_drains() -> None:
    rec = LatencyRecorder(max_samples=256, seed=3)
    for i in range(100_000):
        rec.record("inference", float(i))
    rec.record("decode", 1.5)
    out = rec.drain()
    assert len(out["inference"]) == 256 and out["decode"] == [1.5]
    # an unbiased sample of 0..99999: its mean is near the middle
    assert 35_000 < np.mean(out["inference"]) < 65_000
    assert rec.drain() == {}
    msg = StatsMsg(process="p", role="inference", pid=1, latency_ms=out)
    assert decode(msg.encode()).latency_ms == out       # fits one message


def test_recorder_span() -> None:
    rec = LatencyRecorder()
    rec.record_span("queue", 1_000_000, 3_500_000)
    assert rec.drain() == {"queue": [2.5]}


# ---- aggregator ----

def test_restart_keeps_totals_monotone() -> None:
    agg = MetricsAggregator(sample_processes=False)
    seen = []
    stream = [decoder(10), decoder(40), decoder(5, pid=102), decoder(30, pid=102),
              decoder(31, pid=102, gen=1)]
    for i, msg in enumerate(stream):
        if i == 2:
            agg.note_restart("decoder")
        agg.ingest(msg, now=float(i))
        seen.append(agg.snapshot(now=float(i)).totals.frames_in)
    assert seen == [10, 40, 45, 70, 101]
    row = next(p for p in agg.snapshot(now=5.0).processes if p.name == "decoder")
    assert row.restarts == 2 and row.pid == 102 and row.counters["frames_read"] == 101


def test_late_message_from_old_instance_and_reset_in_place() -> None:
    agg = MetricsAggregator(sample_processes=False)
    agg.ingest(post(10), now=0.0)
    agg.ingest(post(3, pid=302), now=1.0)
    agg.ingest(post(12), now=1.1)                     # late stats of the dead instance
    assert agg.snapshot(now=1.2).totals.frames_out == 15
    agg.ingest(post(1, pid=302), now=2.0)             # counters went back in place: a reset
    assert agg.snapshot(now=2.1).totals.frames_out == 16
    agg.ingest(StatsMsg(process="postprocessor", role="postprocessor", pid=302,
                        counters={"errors": 0}), now=2.2)   # a missing counter is no reset
    assert agg.snapshot(now=2.3).totals.frames_out == 16


def test_two_workers_per_device_fps_and_latency() -> None:
    agg = MetricsAggregator(window_s=2.0, sample_processes=False)
    for k in range(9):                                 # 0.25 s apart
        t = k * 0.25
        agg.ingest(worker(0, 40 * k, lat=[10.0, 12.0]), now=t)
        agg.ingest(worker(1, 20 * k, lat=[20.0]), now=t + 0.01)
    snap = agg.snapshot(now=2.01)
    fps = {d.label: d.fps for d in snap.devices}
    assert fps["CPU#0"] == pytest.approx(160.0) and fps["CPU#1"] == pytest.approx(80.0)
    assert {d.nireq for d in snap.devices} == {4}
    assert snap.stage("inference", "CPU#1").p50_ms == pytest.approx(20.0, rel=0.01)
    assert snap.stage("inference", "CPU").count == 27 == snap.stage("inference").count
    assert snap.stage("inference", "CPU#0").max_ms == 12.0
    assert worker_label("GPU", "inference-3") == "GPU#3"


def test_sliding_window_fps_and_average() -> None:
    agg = MetricsAggregator(window_s=2.0, sample_processes=False)
    agg.start(now=0.0)
    t, done = 0.0, 0
    for _ in range(20):                    # 5 s at 100 FPS, stats every 0.25 s
        t += 0.25
        done += 25
        agg.ingest(post(done), now=t)
    for _ in range(8):                     # then 2 s at 20 FPS
        t += 0.25
        done += 5
        agg.ingest(post(done), now=t)
    snap = agg.snapshot(now=t)
    assert snap.totals.fps == pytest.approx(20.0)
    assert snap.totals.avg_fps == pytest.approx(done / t)
    assert snap.elapsed_s == pytest.approx(t)
    assert agg.snapshot(now=t + 10).totals.fps == 0.0   # silent: the window empties
    assert agg.snapshot(now=t + 10).totals.avg_fps == pytest.approx(done / t)


def test_accounting_edges_and_balance() -> None:
    agg = MetricsAggregator(sample_processes=False)
    agg.ingest(decoder(100, drops=3, errors=2, free=5, lat=[1.0]), now=1.0)
    agg.ingest(StatsMsg(process="preprocessor", role="preprocessor", pid=150,
                        counters={"frames": 97, "batches": 50, "errors": 0},
                        gauges={"input_slots": 8, "input_free": 6, "ready_batches": 1,
                                "credits": 3}), now=1.0)
    agg.ingest(worker(0, 90, in_flight=3), now=1.0)
    agg.ingest(post(80, errors=2), now=1.0)
    snap = agg.snapshot(now=1.0)
    t = snap.totals
    assert (t.frames_in, t.frames_out, t.errors, t.drops, t.in_flight) == (100, 80, 2, 3, 15)
    assert not t.balanced
    edges = {e.name: (e.depth, e.capacity) for e in snap.edges}
    assert edges["decoder→preprocessor"] == (3, 8)
    assert edges["preprocessor→inference"] == (2, 8)
    assert edges["preprocessor ready"] == (1, None)
    assert edges["CPU#0 in flight"] == (3, 4)
    assert edges["postprocessor reorder"] == (2, None)
    procs = {p.name: p for p in snap.processes}
    assert procs["decoder"].errors == 2 and procs["decoder"].drops == 3

    agg.set_state("finished")
    snap = agg.snapshot(now=2.0)
    assert snap.state == "finished"


def stream_decoder(next_ids: dict[int, int], drops: dict[int, int] | None = None, state: str = "running",
                   pid: int = 101) -> StatsMsg:
    drops = drops or {}
    return StatsMsg(process="decoder-0", role="decoder", pid=pid,
                    counters={stream_key("drops", s): drops.get(s, 0) for s in next_ids},
                    gauges={**{stream_key("next_frame_id", s): n for s, n in next_ids.items()},
                            **{stream_key("state", s): stream_state_code(state) for s in next_ids}})


def test_stream_accounting_is_a_consistent_cut_with_real_in_flight() -> None:
    agg = MetricsAggregator(sample_processes=False)
    assert agg.add_stream("door", "rtsp://x/door", "live") == 0
    assert agg.add_stream("clip", "clip.mp4", "file") == 1
    agg.set_stream_acks(1, 10, 0, now=0.5)
    agg.ingest(stream_decoder({0: 30, 1: 40}, drops={0: 5}), now=1.0)    # the cut: clip read 40, 10 written
    agg.set_stream_acks(1, 35, 1, now=1.1)             # acks go on between two decoder heartbeats
    agg.set_stream_acks(0, 20, 0, now=1.1)
    rows = {r.name: r for r in agg.snapshot(now=1.2).streams}
    clip, door = rows["clip"], rows["door"]
    assert (clip.frames_in, clip.frames_out, clip.errors, clip.in_flight) == (40, 10, 0, 30)
    assert (door.frames_in, door.drops, door.kind, door.state) == (35, 5, "live", "running")
    t = agg.snapshot(now=1.2).totals
    assert t.frames_in == t.frames_out + t.errors + t.drops + t.in_flight == 75 and t.in_flight == 60
    agg.ingest(stream_decoder({0: 30, 1: 40}, drops={0: 5}), now=1.25)  # next heartbeat: a new cut
    clip = {r.name: r for r in agg.snapshot(now=1.3).streams}["clip"]
    assert (clip.frames_out, clip.errors, clip.in_flight) == (35, 1, 4)
    agg.set_stream_acks(1, 39, 1, now=1.4)
    agg.end_stream(1)                                   # ended: final, whatever the heartbeat
    clip = {r.name: r for r in agg.snapshot(now=1.5).streams}["clip"]
    assert (clip.state, clip.frames_in, clip.frames_out, clip.in_flight) == ("ended", 40, 39, 0) and clip.balanced
    assert clip.avg_fps == pytest.approx(40 / 0.9, rel=1e-3)
    report = json.loads(json.dumps(agg.snapshot(now=1.5).to_dict()))
    assert report["streams"]["clip"]["in"] == 40 and report["streams"]["door"]["kind"] == "live"
    assert Snapshot.from_dict(report).to_dict()["streams"] == report["streams"]


def test_stream_latency_and_counters_stay_out_of_process_rows() -> None:
    agg = MetricsAggregator(sample_processes=False)
    agg.add_stream("a")
    agg.add_stream("b")
    agg.ingest(StatsMsg(process="postprocessor", role="postprocessor", pid=3,
                        counters={"results": 3, stream_key("results", 0): 2, stream_key("duplicates", 1): 4},
                        latency_ms={"end_to_end": [10.0, 20.0, 30.0], stream_key("end_to_end", 0): [10.0, 20.0],
                                    stream_key("end_to_end", 1): [30.0], stream_key("end_to_end", 9): [1.0]}),
               now=0.0)
    snap = agg.snapshot(now=0.0)
    rows = {r.name: r for r in snap.streams}
    assert rows["a"].latency.count == 2 and rows["b"].latency.max_ms == 30.0 and rows["b"].duplicates == 4
    assert snap.stage("end_to_end").count == 3 and not any("@" in r.stage for r in snap.stages)
    assert snap.processes[0].counters == {"results": 3}
    assert split_stream_key("drops@12") == ("drops", 12) and split_stream_key("drops") is None


def test_psutil_rows_for_current_pid_and_dead_pid() -> None:
    agg = MetricsAggregator(sample_processes=True)
    me = StatsMsg(process="postprocessor", role="postprocessor", pid=os.getpid())
    ghost = StatsMsg(process="decoder", role="decoder", pid=2**22 + 12345)   # beyond pid_max
    agg.ingest(me, now=0.0)
    agg.ingest(ghost, now=0.0)
    sum(i * i for i in range(200_000))                 # a little CPU time
    snap = agg.snapshot(now=1.0)
    rows = {p.name: p for p in snap.processes}
    assert rows["postprocessor"].alive and rows["postprocessor"].rss_mib > 1
    assert rows["postprocessor"].cpu_percent is not None and rows["postprocessor"].cpu_percent >= 0
    assert not rows["decoder"].alive and rows["decoder"].cpu_percent is None
    agg.watch("supervisor", os.getpid())
    assert any(p.name == "supervisor" and p.alive for p in agg.snapshot(now=2.0).processes)


def test_malformed_stats_are_ignored() -> None:
    agg = MetricsAggregator(sample_processes=False)
    agg.ingest(StatsMsg(process="x", role="inference", pid=1, device="CPU",
                        counters={"frames": "many", "batches": float("nan"), "ok": 3},
                        gauges=[1, 2], latency_ms={"inference": ["a", None, 2.0], "q": 5}),
               now=0.0)
    snap = agg.snapshot(now=0.0)
    assert snap.processes[0].counters == {"ok": 3}
    assert snap.stage("inference").count == 1


def test_snapshot_to_dict_is_json() -> None:
    agg = MetricsAggregator(sample_processes=True)
    agg.start(now=0.0)
    agg.ingest(decoder(50, lat=[1.0, 2.0]), now=0.5)
    agg.ingest(worker(0, 50, lat=[9.0]), now=0.5)
    agg.ingest(post(48, 2, pid=os.getpid(), e2e=[15.0, 25.0]), now=0.5)
    agg.ingest(post(50, 2, pid=os.getpid(), e2e=[15.0, 25.0]), now=1.0)
    report = json.loads(json.dumps(agg.snapshot(now=1.0).to_dict()))
    assert report["format"] == "ovstream-report/1"
    assert report["accounting"]["in"] == 50 and report["accounting"]["out"] == 50
    assert report["latency_ms"]["end_to_end"]["count"] == 4
    assert set(report["latency_ms"]["inference"]) >= {"median", "avg", "min", "max", "p95"}
    assert report["latency_ms_by_device"]["CPU#0"]["inference"]["max"] == 9.0
    assert report["devices"][0]["name"] == "CPU#0"
    assert report["throughput_fps"] == pytest.approx(52.0)
    assert {q["name"] for q in report["queues"]} >= {"decoder→preprocessor"}


def test_report_round_trip_and_state() -> None:
    agg = MetricsAggregator(sample_processes=False)
    agg.note_ready("inference-0", 4242, {"device": "CPU"})
    assert agg.snapshot(now=0.0).state == "starting"
    agg.ingest(decoder(20), now=0.5)
    agg.ingest(worker(0, 18, lat=[9.0]), now=0.5)
    agg.ingest(post(18, e2e=[15.0]), now=0.5)
    snap = agg.snapshot(now=1.0)
    assert snap.state == "running" and snap.devices[0].label == "CPU#0"
    report = json.loads(json.dumps(snap.to_dict()))
    report["restarts"] = {}                            # extra keys the supervisor adds
    again = Snapshot.from_dict(report)
    assert again.to_dict() == snap.to_dict()
