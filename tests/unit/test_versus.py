"""``ovstream bench --versus``: the threaded script, the job watcher, the steady window, the profile."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console

from engine.config import load_config
from engine.tools.bench.loops import Prepared, list_images, sync_loop
from engine.tools.bench.versus import (
    Sample,
    count_lines,
    engine_profile,
    profile_summary,
    run_job,
    steady_window,
    summarize,
    threaded_command,
    verdicts,
    zero_overhead_ceiling,
)
from tests.conftest import COCO, REPO


def test_threaded_script_finds_what_the_engine_adapter_finds(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    chosen = list_images(COCO)[:6]
    for path in chosen:
        (images / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    proc = subprocess.run(threaded_command(str(images), "face", out, None, 2, "CPU"), capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["frame_id"] for r in records) == list(range(12))          # 6 images × 2 loops, each once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["errors"] == 0 and summary["nireq"] == 2
    assert 0 < summary["cpu_s_start"] <= summary["cpu_s_end"]
    assert summary["hint"] == "THROUGHPUT"                                    # the engine's settings
    # the same detections as the codelab's sync loop through the engine's adapter
    reference = sync_loop(Prepared(load_config(None, {"model": {"name": "face"}}).model, "CPU"), chosen, keep=True)
    by_id = {r["frame_id"]: r["detections"] for r in records}
    assert sum(len(d) for d in reference.detections) > 0                      # some of them hold faces
    for index, expected in enumerate(reference.detections):
        got = by_id[index]
        assert [d["label"] for d in got] == [d.label for d in expected]
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a["box"], b.box, atol=1.0)


def test_count_lines_reads_only_whole_appended_lines(tmp_path):
    path = tmp_path / "results.jsonl"
    state: dict = {}
    assert count_lines(path, state) == 0                        # not there yet
    path.write_bytes(b'{"a": 1}\n{"b"')
    assert count_lines(path, state) == 1                        # the half line waits
    with open(path, "ab") as fh:
        fh.write(b': 2}\n{"c": 3}\n')
    assert count_lines(path, state) == 3
    assert count_lines(path, state) == 3


def test_run_job_measures_wall_cpu_first_result_and_samples(tmp_path):
    results = tmp_path / "results.jsonl"
    script = ("import time,sys\n"
              "s=time.process_time()\n"
              "while time.process_time()-s<0.2: pass\n"            # 0.2 s of CPU before the first result
              f"f=open({str(results)!r},'w')\n"
              "for i in range(5):\n"
              "    f.write('{}\\n'); f.flush(); time.sleep(0.05)\n")
    job = run_job("t", [sys.executable, "-c", script], results, tmp_path / "log.txt", "root", timeout_s=60)
    assert job.exit_code == 0 and not job.error
    assert job.frames == 5
    assert job.cpu_s >= 0.2 and job.wall_s >= 0.45
    assert job.first_result_s is not None and 0.2 <= job.first_result_s < job.wall_s
    assert job.first_result_s + 0.15 <= job.last_result_s <= job.wall_s          # 4 sleeps of 50 ms between
    assert job.samples[-1].lines == 5 and job.samples[-1].cpu.get("root", 0) >= 0.2


def test_run_job_reports_a_failing_command(tmp_path):
    job = run_job("t", [sys.executable, "-c", "import sys; print('broken input'); sys.exit(3)"],
                  tmp_path / "r.jsonl", tmp_path / "log.txt", "root")
    assert job.exit_code == 3 and "exit code 3" in job.error and "broken input" in job.error


def test_steady_window_excludes_start_up_and_counts_cpu_per_process():
    samples = [Sample(0.0, 0, {"a": 0.5}), Sample(1.0, 0, {"a": 1.0}),          # start-up: no results
               Sample(2.0, 10, {"a": 1.2, "b": 0.1}), Sample(3.0, 60, {"a": 1.7, "b": 0.3}),
               Sample(4.0, 110, {"a": 2.2, "b": 0.5}), Sample(4.5, 110, {"a": 2.3, "b": 0.5})]
    window = steady_window(samples, expected=100, warm=0.1)
    assert window["frames"] == 100 and window["seconds"] == 2.0 and window["fps"] == 50.0
    assert window["cpu_ms_per_frame"] == {"a": 10.0, "b": 4.0}                  # (2.2-1.2)/100 s, (0.5-0.1)/100 s
    assert window["cpu_ms_per_frame_total"] == 14.0
    assert steady_window([Sample(0.0, 0, {}), Sample(1.0, 0, {})], 100) is None  # nothing written
    assert steady_window([], 100) is None


def test_engine_profile_splits_work_from_overhead_over_one_span():
    """Each stage's CPU from its start-up done (``ready_cpu_s``) to exit against the work it
    counted over the same frames; the supervisor's from the steady window."""
    steady = {"cpu_ms_per_frame": {"supervisor": 0.4, "decoder-0": 9.9}}
    report = {"accounting": {"out": 1000}, "processes": [
        {"name": "supervisor", "role": "supervisor", "counters": {}, "gauges": {}, "cpu_s": 1.5},
        {"name": "decoder-0", "role": "decoder", "cpu_s": 3.5, "gauges": {"ready_cpu_s": 0.5},
         "counters": {"work_cpu_us": 2_500_000, "frames_read": 1000}},
        {"name": "preprocessor", "role": "preprocessor", "cpu_s": 2.4, "gauges": {"ready_cpu_s": 0.4},
         "counters": {"work_cpu_us": 1_500_000, "frames": 1000}},
        {"name": "inference-0", "role": "inference", "cpu_s": 19.0,
         "gauges": {"ready_cpu_s": 1.0, "ready_own_cpu_s": 0.1, "own_cpu_s": 0.6},
         "counters": {"frames": 1000}},
        {"name": "postprocessor", "role": "postprocessor", "cpu_s": 1.3, "gauges": {"ready_cpu_s": 0.3},
         "counters": {"work_cpu_us": 300_000, "results": 1000}},
        {"name": "decoder-1", "role": "decoder", "cpu_s": 0.5, "gauges": {}, "counters": {}}]}   # never ready
    rows = {r["process"]: r for r in engine_profile(steady, report, inference_core_ms=17.0, inference_openvino_ms=16.8)}
    assert "decoder-1" not in rows
    assert rows["supervisor"]["work_ms"] == 0 and rows["supervisor"]["overhead_ms"] == 0.4
    assert rows["decoder-0"]["core_ms_per_frame"] == 3.0                  # not the steady window's 9.9
    assert rows["decoder-0"]["work_ms"] == 2.5 and rows["decoder-0"]["overhead_ms"] == 0.5
    assert rows["preprocessor"]["overhead_ms"] == 0.5
    assert rows["inference-0"]["work_ms"] == 17.0 and rows["inference-0"]["overhead_ms"] == 1.0
    assert rows["inference-0"]["openvino_beyond_probe_ms"] == 0.7       # 17.5 in OpenVINO's threads, the probe's 16.8
    assert "openvino_beyond_probe_ms" not in rows["decoder-0"]
    profile = profile_summary([(steady, report)], inference_core_ms=17.0, inference_openvino_ms=16.8)
    assert profile["work_ms_per_frame"] == 2.5 + 1.5 + 17.0 + 0.3
    assert profile["openvino_beyond_probe_ms_per_frame"] == 0.7
    # a script spending exactly the work per frame leaves the engine no room; one spending 10% more, 10%
    summary = {"steady_cpu_ms_per_frame": {"threaded": {"median": 21.3}, "plain": {"median": 23.43}}}
    assert zero_overhead_ceiling(profile, summary) == {"threaded": 1.0, "plain": 1.1}
    assert rows["postprocessor"]["work_ms"] == 0.3 and rows["postprocessor"]["overhead_ms"] == 0.7


def test_plain_script_compiles_with_openvinos_defaults(tmp_path):
    out = tmp_path / "out"
    cmd = threaded_command(str(COCO), "face", out, None, 1, "CPU", settings="default")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hint"] == "LATENCY" and summary["frames"] == len(list_images(COCO))


def test_summary_ratios_pairs_and_targets():
    runs = {"engine": [{"job_wall_s": 2.0, "steady_fps": 110.0, "first_result_s": 0.7},
                       {"job_wall_s": 3.0, "steady_fps": 90.0, "first_result_s": 0.9}],
            "threaded": [{"job_wall_s": 2.5, "steady_fps": 100.0, "first_result_s": 1.0},
                         {"job_wall_s": 2.5, "steady_fps": 100.0, "first_result_s": 1.0}],
            "plain": [{"job_wall_s": 4.0, "steady_fps": 80.0}, {"job_wall_s": 4.0, "steady_fps": 75.0}]}
    summary = summarize(runs)
    assert summary["steady_fps"]["engine"]["median"] == 100.0
    assert summary["steady_fps"]["engine_over_threaded"] == 1.0
    assert summary["steady_fps"]["paired_ratio"] == {"median": 1.0, "min": 0.9, "max": 1.1, "n": 2}
    assert summary["job_cpu_s"]["engine"] is None and summary["job_cpu_s"]["paired_ratio"] is None
    targets = verdicts(summary, overhead_ms=0.4)
    assert targets["steady_fps"]["met"] is True                 # 1.0 is >= 1.0
    behind = dict(summary, steady_fps=dict(summary["steady_fps"], engine_over_threaded=0.99))
    assert verdicts(behind, overhead_ms=0.4)["steady_fps"]["met"] is False
    assert summary["steady_fps"]["engine_over_plain"] == round(100.0 / 77.5, 3)
    assert summary["steady_fps"]["paired_ratio_plain"]["min"] == 1.2      # 90 / 75 and 110 / 80
    assert targets["steady_fps_plain"]["met"] is True and targets["job_wall_s_plain"]["met"] is True
    assert targets["job_wall_s"]["met"] is False                # 2.5 / 2.5 = 1.0 is not < 1
    assert targets["first_result_s"]["value"] == 0.8 and targets["first_result_s"]["met"] is True
    assert targets["overhead_ms_per_frame"]["met"] is True
    assert verdicts(summarize({}), None)["steady_fps"]["met"] is None


def test_render_versus_shows_the_comparison_profile_and_targets():
    from engine.tools.bench.cli import render_versus

    summary = summarize({"engine": [{"steady_fps": 50.0, "job_wall_s": 3.0}],
                         "threaded": [{"steady_fps": 60.0, "job_wall_s": 2.0}],
                         "plain": [{"steady_fps": 40.0, "job_wall_s": 4.0}]})
    result = {"machine": {"cpu": "test cpu", "logical_cores": 2}, "settings": {"model": "face", "frames": 100},
              "versus": {"summary": summary, "runs": {"engine": [{"errors": ["steady: exit code 1"]}], "threaded": []},
                         "probe": {"core_ms_per_frame": 4.5, "fps": 400.0},
                         "profile": {"rows": [{"process": "inference-0", "core_ms_per_frame": 5.0,
                                               "work": "inference (probe)", "work_ms": 4.5, "overhead_ms": 0.5}],
                                     "core_ms_per_frame": 5.0, "overhead_ms_per_frame": 0.5},
                         "targets": verdicts(summary, 0.5)}}
    out = io.StringIO()
    render_versus(result, Console(file=out, width=200))
    text = out.getvalue()
    for expected in ("steady-state FPS", "0.833×", "1.250×", "inference-0", "engine overhead", "Targets",
                     "exit code 1"):
        assert expected in text, expected


@pytest.mark.parametrize("flags", [["--steady-loops", "0"], ["--probe-seconds", "0"]])
def test_versus_rejects_bad_settings(flags, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "bench", "--versus", *flags, "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and flags[0] in proc.stderr and "Traceback" not in proc.stderr


def test_live_figures_compare_end_to_end_with_the_stage_medians():
    from engine.tools.bench.versus import live_figures

    report = {"accounting": {"out": 300}, "latency_ms": {
        "decode": {"median": 3.0}, "preprocess": {"median": 1.5}, "queue": {"median": 0.4},
        "inference": {"median": 20.0}, "postprocess": {"median": 0.5}, "end_to_end": {"median": 30.0, "p95": 41.0}}}
    figures = live_figures(report)
    assert figures["sum_p50_ms"] == 25.0 and figures["ratio"] == 1.2 and figures["queue_p50_ms"] == 0.4
    assert figures["frames"] == 300 and figures["end_to_end_p95_ms"] == 41.0
    del report["latency_ms"]["inference"]
    assert live_figures(report) is None                        # a stage without figures: no verdict
    assert verdicts(summarize({}), None, 1.2)["live_latency_ratio"]["met"] is True
