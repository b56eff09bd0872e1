"""bench: the codelab loops agree, benchmark_app's output parses, transports deliver intact frames and
free their shared memory, and the figure helpers. Fast, and no assertion on wall-clock figures."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from engine.config import load_config
from engine.core.results import Detection
from engine.tools.bench.ceiling import parse_output
from engine.tools.bench.engine_runs import DEFAULT_GRID, EngineRun, engine_command, sweep_grid, tuned_setting
from engine.tools.bench.soak import ProcessTrace, soak_frames_to_loop, stream_window
from engine.tools.bench.stats import Spread, fmt, percentile, ratio
from engine.tools.bench.transport import METHODS, make_frame, measure, touch
from tests.conftest import COCO

BENCHMARK_APP_SAMPLE = """\
[Step 1/11] Parsing and validating input arguments
[ INFO ] Parsing input parameters
[Step 2/11] Loading OpenVINO Runtime
[ INFO ] OpenVINO:
[ INFO ] Build ................................. 2026.4.1-22982-e213a147257-releases/2026/4
[Step 8/11] Querying optimal runtime parameters
[ INFO ] Model:
[ INFO ]   NETWORK_NAME: TensorFlow_Lite_Frontend_IR
[ INFO ]   OPTIMAL_NUMBER_OF_INFER_REQUESTS: 2
[ INFO ]   NUM_STREAMS: 2
[ INFO ]   INFERENCE_NUM_THREADS: 2
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'bfloat16'>
[ INFO ]   PERFORMANCE_HINT: THROUGHPUT
[Step 9/11] Creating infer requests and preparing input tensors
[ WARNING ] No input files were given for input 'input_1'!. This input will be filled with random values!
[ INFO ] Fill input 'input_1' with random values
[Step 10/11] Measuring performance (Start inference asynchronously, 2 inference requests, limits: 2000 ms duration)
[ INFO ] Benchmarking in inference only mode (inputs filling are not included in measurement loop).
[ INFO ] First inference took 3.24 ms
[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            1480 iterations
[ INFO ] Duration:         2002.36 ms
[ INFO ] Latency:
[ INFO ]    Median:        2.06 ms
[ INFO ]    Average:       2.49 ms
[ INFO ]    Min:           1.86 ms
[ INFO ]    Max:           14.64 ms
[ INFO ] Throughput:   739.13 FPS
"""


# ---- loops ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared():
    from engine.tools.bench.loops import Prepared

    return Prepared(load_config(None, {"model": {"name": "face"}}).model, "CPU")


@pytest.fixture(scope="module")
def images():
    from engine.tools.bench.loops import list_images

    found = list_images(COCO)
    assert len(found) == 100
    return found[:10]                  # two of them hold faces (7 detections); 10 is not a multiple of nireq 3


def _same(a: list[list[Detection]], b: list[list[Detection]]) -> None:
    assert len(a) == len(b)
    for frame_a, frame_b in zip(a, b, strict=True):
        assert len(frame_a) == len(frame_b)
        for da, db in zip(frame_a, frame_b, strict=True):
            assert da.label == db.label
            assert da.score == pytest.approx(db.score, abs=1e-3)
            np.testing.assert_allclose(da.box, db.box, atol=1.0)
            np.testing.assert_allclose(da.keypoints, db.keypoints, atol=1.0)


def test_sync_and_async_loops_process_every_image_and_agree(prepared, images):
    from engine.tools.bench.loops import async_loop, sync_loop

    sync = sync_loop(prepared, images, keep=True)
    assert sync.frames == len(images) and sync.failures == 0
    assert sum(len(d) for d in sync.detections) > 0, "the chosen images must hold faces"
    for nireq in (1, 3):
        result = async_loop(prepared, images, nireq=nireq, keep=True)
        assert result.frames == len(images) and result.nireq == nireq
        assert len(result.latency_ms) == len(images)
        _same(sync.detections, result.detections)
    summary = sync.summary()
    assert summary["frames"] == len(images) and set(summary["stage_ms"]) == {"read", "resize", "infer", "parse"}


def test_loops_repeat_passes_and_count_unreadable_images(prepared, images, tmp_path):
    from engine.tools.bench.loops import async_loop, sync_loop

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths = [images[9], broken, images[5]]
    sync = sync_loop(prepared, paths, passes=2, keep=True)
    assert (sync.frames, sync.failures) == (4, 2)
    result = async_loop(prepared, paths, nireq=2, passes=2, keep=True)
    assert (result.frames, result.failures) == (4, 2)
    _same(sync.detections, result.detections)


# ---- benchmark_app --------------------------------------------------------------------------------

def test_benchmark_app_output_parses():
    result = parse_output(BENCHMARK_APP_SAMPLE)
    assert result.throughput_fps == 739.13
    assert result.latency_ms == {"median": 2.06, "avg": 2.49, "min": 1.86, "max": 14.64}
    assert (result.count, result.duration_ms, result.nireq, result.streams) == (1480, 2002.36, 2, 2)
    assert result.precision == "bfloat16"


def test_benchmark_app_output_without_throughput_is_an_error():
    with pytest.raises(ValueError, match="Throughput"):
        parse_output("[ ERROR ] Exception from src/inference/src/core.cpp:\nCannot read the model\n")


# ---- transport ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_transport_delivers_intact_frames_and_frees_shm(method):
    result = measure(method, "64x48", frames=20, warmup=3)
    assert result.checksum_ok
    assert result.frames == 20 and result.seconds > 0
    assert math.isfinite(result.us_per_frame) and result.fps > 0
    if method.startswith("shm"):
        assert result.shm_path and not Path(result.shm_path).exists()
    row = result.to_dict()
    assert row["method"] == method and row["size"] == "64x48"


def test_touch_reads_every_page():
    frame = make_frame(1080, 1920)
    step = max(1, 4096 // 6)
    assert step * 3 < 4096                       # reads are less than a page apart within a row
    assert touch(frame) == int(frame[:, ::step, 0].sum(dtype=np.uint64))
    assert touch(frame) != touch(np.zeros_like(frame))


# ---- helpers --------------------------------------------------------------------------------------

def test_spread_median_and_range_ignore_missing_values():
    spread = Spread.of([3.0, None, 1.0, float("nan"), 2.0, 10.0])
    assert (spread.median, spread.min, spread.max, spread.n) == (2.5, 1.0, 10.0, 4)
    assert Spread.of([None, float("inf")]) is None
    assert Spread.of([5]).to_dict() == {"median": 5.0, "min": 5.0, "max": 5.0, "n": 1}


def test_ratio_percentile_and_format():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None and ratio(1.0, None) is None
    assert percentile([], 50) is None
    assert percentile([4.0], 95) == 4.0
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile(range(101), 95) == pytest.approx(95.0)
    assert fmt(None) == "—" and fmt(1.234, 2, "×") == "1.23×"


def test_engine_command_and_tuned_setting():
    cmd = engine_command("data/samples", "face", Path("out"), devices=["CPU", "CPU"], nireq=4, streams=1, batch=2)
    assert cmd[1:4] == ["-m", "engine.cli", "run"]
    joined = " ".join(cmd)
    assert "--source data/samples --model face --output out --no-dashboard" in joined
    assert "--nireq 4 --streams 1 --batch 2" in joined and joined.count("--device CPU") == 2
    assert "--loop" not in joined
    assert len(sweep_grid(*DEFAULT_GRID.values())) == 12
    setting, source = tuned_setting(None, "CPU")
    assert source == "fixed" and set(setting) == {"nireq", "streams", "batch"}
    best = {"best": {"CPU": {"device": "CPU", "nireq": 8, "streams": 2, "batch": 4, "fps": 99.0}}}
    assert tuned_setting(best, "CPU") == ({"nireq": 8, "streams": 2, "batch": 4}, "sweep")


def test_engine_run_figures_come_from_the_report():
    report = {"duration_s": 2.0, "throughput_fps": 150.0, "accounting": {"out": 300},
              "latency_ms": {"end_to_end": {"median": 20.0, "p95": 40.0, "avg": 22.0, "count": 300}}}
    run = EngineRun(["ovstream"], 0, 5.5, report)
    assert run.ok and run.fps == 150.0 and run.startup_s == 3.5
    assert run.latency("end_to_end", "p95") == 40.0 and run.latency("decode") is None
    assert run.summary()["fps_including_startup"] == pytest.approx(300 / 5.5, abs=0.01)
    failed = EngineRun(["ovstream"], 2, 1.0, {}, "exit code 2: boom")
    assert not failed.ok and failed.fps is None and failed.summary()["error"].startswith("exit code 2")


def test_soak_verdict_judges_the_stream_after_warmup_only():
    mib = 1 << 20
    # start-up (t < 10), a warm-up that grows (10..14), a steady stream, shutdown (t > 110) that shrinks
    samples = [(t, (20 if t < 10 else 50 if t < 15 else 100 if t <= 110 else 60) * mib) for t in range(115)]
    verdict = ProcessTrace("decoder", [1], samples).verdict(10.0, 110.0)
    assert verdict["stable"] is True and verdict["first_mib"] == 20.0 and verdict["max_mib"] == 100.0
    assert verdict["last_mib"] == 60.0 and verdict["drift_pct"] == 0.0
    leaking = ProcessTrace("inference-0", [2], [(t, (100 + t) * mib) for t in range(100)])
    assert leaking.verdict(0.0, 100.0)["stable"] is False
    assert ProcessTrace("x", [3], [(0.0, mib)]).verdict(0.0, 10.0)["stable"] is None
    assert soak_frames_to_loop(20_000) == 100 and soak_frames_to_loop(1) == 1


def test_soak_stream_window_from_the_report(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"timestamp": 1000.0, "duration_s": 100.0, "throughput_fps": 100.0,
                                "accounting": {"out": 9000, "errors": 0}}))
    assert stream_window(path, 0.0, 2000.0)[:2] == (900.0, 990.0)
    assert stream_window(tmp_path / "missing.json", 5.0, 50.0) == (5.0, 50.0, {})


def _fake_result() -> dict:
    spread = {"median": 100.0, "min": 90.0, "max": 110.0, "n": 3}
    return {
        "machine": {"cpu": "test CPU", "logical_cores": 2, "physical_cores": 2, "openvino": "x"},
        "settings": {"model": "face", "device": "CPU", "repeats": 3, "passes": 1, "images": "data/samples"},
        "tuned": {"nireq": 4, "streams": 1, "batch": 1, "workers": 2, "source": "fixed"},
        "variants": {
            "a": {"short": "sync loop", "fps": spread, "p50_ms": spread, "p95_ms": spread, "runs": [{}], "errors": []},
            "c": {"short": "engine default", "fps": spread, "p50_ms": spread, "p95_ms": None, "runs": [{}],
                  "errors": [], "stage_ms": {"decode": 3.0, "inference": 2.0, "end_to_end": 20.0}},
            "d": {"short": "engine tuned", "fps": None, "runs": [{"error": "boom"}], "errors": ["boom"]},
        },
        "ratios": {"c/a": {"value": 1.0, "target": None, "met": None},
                   "c/b": {"value": None, "target": 1.5, "met": None}},
        "transport": {"window": 4, "rows": [
            {"size": "300x300", "method": "shm", "frames": 10, "fps": spread, "us_per_frame": spread,
             "latency_p50_us": spread, "checksum_ok": True}]},
    }


def test_render_and_plot(tmp_path):
    from engine.tools.bench.cli import render

    out = io.StringIO()
    render(_fake_result(), Console(file=out, width=200))
    text = out.getvalue()
    assert "sync loop" in text and "1 failed: boom" in text and "300x300" in text
    pytest.importorskip("matplotlib")
    from engine.tools.bench.plot import plot_bench

    path = plot_bench(_fake_result(), tmp_path / "bench.png")
    assert path is not None and path.stat().st_size > 1000
