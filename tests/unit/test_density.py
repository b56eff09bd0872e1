"""bench --density: the sustain rule, the summary over repeats, the engine configs it writes, and the
threaded loop it compares against serving real streams. No assertion on wall-clock figures."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from rich.console import Console

from engine.config import RunConfig, read_toml
from engine.tools.bench.bound import Bound, judge
from engine.tools.bench.density import SUSTAIN_FRACTION, Trial, engine_config, summarize
from engine.tools.bench.loops import list_images
from engine.tools.bench.soak import write_video
from tests.conftest import COCO, REPO


def trial(variant: str, streams: int, delivered: list[int], drops: list[int] | None = None, error: str = "",
          repeat: int = 0) -> Trial:
    return Trial(variant, streams, repeat, seconds=10.0, target_fps=30.0, delivered=delivered,
                 drops=drops or [0] * len(delivered), cpu_s=5.0, error=error)


def test_sustained_needs_every_stream_at_95_percent_and_no_drops():
    assert trial("engine", 2, [300, 290]).sustained
    assert not trial("engine", 2, [300, 284]).sustained           # 28.4 < 0.95 × 30
    assert not trial("engine", 2, [300, 300], drops=[0, 1]).sustained
    assert not trial("engine", 3, [300, 300]).sustained            # a stream without results
    assert not trial("engine", 1, [300], error="exit code 1").sustained
    assert SUSTAIN_FRACTION == 0.95


def test_summary_takes_the_largest_count_sustained_by_a_majority_of_repeats():
    trials = [trial("engine", 1, [300], repeat=0), trial("engine", 1, [300], repeat=1),
              trial("engine", 4, [300] * 4, repeat=0), trial("engine", 4, [300, 300, 300, 200], repeat=1),
              trial("engine", 4, [300] * 4, repeat=2),
              trial("threaded", 1, [300]), trial("threaded", 4, [200] * 4, drops=[30] * 4)]
    out = summarize(trials, ("engine", "threaded"), 30.0, 10.0, (1, 4), 3)
    assert out["variants"]["engine"]["sustained_streams"] == 4
    assert out["variants"]["threaded"]["sustained_streams"] == 1
    assert out["ratios"] == {"engine/threaded": 4.0}
    row = out["variants"]["engine"]["by_streams"][4]
    assert row["sustained_runs"] == 2 and row["runs"] == 3
    assert row["min_fps"]["min"] == 20.0 and row["min_fps"]["median"] == 30.0
    assert out["variants"]["threaded"]["by_streams"][4]["drops"] == 120
    json.dumps(out)                                                 # bench.json material


def test_render_density_shows_every_variant_and_the_verdict():
    from engine.tools.bench.cli import render_density

    out = summarize([trial("engine", 2, [300, 300]), trial("separate", 2, [250, 250])], ("engine", "separate"),
                    30.0, 10.0, (2,), 1)
    console = Console(file=io.StringIO(), width=200)
    render_density(json.loads(json.dumps({"density": out, "machine": {}, "settings": {}})), console)
    text = console.file.getvalue()
    assert "engine 2, separate 0" in text and "30.0" in text and "25.0" in text


def test_engine_config_is_a_valid_run_config_with_camera_like_streams(tmp_path):
    path = tmp_path / "density.toml"
    path.write_text(engine_config(tmp_path / "clip.mp4", 3, "face", "CPU", tmp_path / "out"), encoding="utf-8")
    data = read_toml(path)
    cfg = RunConfig.from_dict(data, origin=str(path))
    assert [s.name for s in cfg.sources] == ["cam00", "cam01", "cam02"]
    assert all(s.live == "yes" and s.realtime and s.uri == str(tmp_path / "clip.mp4") for s in cfg.sources)
    assert cfg.model.name == "face" and cfg.output.dir == str(tmp_path / "out")


def test_threaded_loop_serves_every_stream(tmp_path):
    video = write_video(tmp_path / "clip", list_images(COCO)[:8], frames=30, fps=30)
    proc = subprocess.run([sys.executable, "-m", "engine.tools.bench.density_loop", "--video", str(video),
                           "--streams", "2",
                           "--seconds", "1", "--fps", "10", "--model", "face"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["streams"] == 2 and len(result["delivered"]) == 2
    assert all(n > 0 for n in result["delivered"])                  # 10 FPS for 1 s: a few frames each
    assert all(r > 0 for r in result["read"]) and len(result["drops"]) == 2


@pytest.mark.parametrize("bad", ["0", "1,x", ""])
def test_density_rejects_bad_stream_counts(bad, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "bench", "--density", "--density-streams", bad,
                           "--output", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "--density-streams" in proc.stderr and "Traceback" not in proc.stderr


def test_the_bound_is_measured_step_by_step_and_rendered(tmp_path):
    """Each unavoidable step measured alone (cv2 reader, bilinear resize, benchmark_app, the adapter's
    parse) and the bound = cores ÷ (FPS × their sum); the table line states it beside the engine."""
    from engine.tools.bench.bound import measure_bound
    from engine.tools.bench.cli import render_density
    from engine.tools.modeltools.evaluate import resolve_section

    video = write_video(tmp_path / "clip", list_images(COCO)[:8], frames=30, fps=30)
    bound = measure_bound(video, resolve_section({"name": "face"}), "CPU", 30.0, tmp_path / "bound", seconds=1)
    assert min(bound.decode_ms, bound.resize_ms, bound.infer_ms, bound.parse_ms) > 0 and bound.infer_fps > 0
    assert bound.infer_ms == pytest.approx(bound.cores * 1000 / bound.infer_fps, rel=0.01)
    assert bound.streams == pytest.approx(bound.cores * 1000 / (30 * bound.frame_ms))
    assert (tmp_path / "bound" / "benchmark_app-b1.log").is_file()
    out = summarize([trial("engine", 2, [300, 300])], ("engine",), 30.0, 10.0, (2,), 1)
    out.update(judge(out, bound))
    assert out["engine_of_bound"] == round(2 / bound.streams, 3)
    console = Console(file=io.StringIO(), width=300)
    render_density({"density": out, "machine": {}, "settings": {}}, console)
    text = console.file.getvalue()
    assert f"{out['bound']['streams']:.1f} streams" in text and "benchmark_app" in text   # as the report rounds it
    assert f"90% of the bound is {bound.target_streams()} streams" in text


def _bound(frame_ms: float) -> Bound:
    """Two cores, 30 FPS streams, all of ``frame_ms`` in inference."""
    return Bound(0.0, 0.0, frame_ms, 0.0, infer_batch=1, infer_fps=2000 / frame_ms, cores=2, fps=30.0)


def test_the_target_is_whole_streams_and_says_what_it_leaves_a_pipeline():
    """90 % of a bound of 2.6 streams is 3 streams, past the bound: no pipeline can (a negative
    allowance); 90 % of 13.7 is 13, which leaves 0.02 core-ms per frame beyond the work."""
    past = _bound(2000 / (30 * 2.6))
    assert past.streams == pytest.approx(2.6) and past.target_streams() == 3 and past.allowance_ms(3) < 0
    near = _bound(2000 / (30 * 13.7))
    assert near.target_streams() == 13
    assert near.allowance_ms(13) == pytest.approx(2000 / 390 - 2000 / 411)
    assert _bound(2000 / (30 * 10.0)).target_streams() == 9          # exactly 9.0: not 10
    assert _bound(2000 / (30 * 10.0)).allowance_ms(10) == pytest.approx(0.0)


def test_the_judgement_gives_each_variant_its_cpu_beyond_the_work_where_it_sustained():
    from engine.tools.bench.cli import render_density

    out = summarize([trial("engine", 2, [300, 300]), trial("threaded", 2, [250, 250])],
                    ("engine", "threaded"), 30.0, 10.0, (2,), 1)
    bound = _bound(2000 / (30 * 2.6))
    out.update(judge(out, bound))
    cpu = out["variants"]["engine"]["by_streams"][2]["cpu_ms_per_frame"]["median"]     # 5 s over 600 frames
    assert out["beyond_work_ms"] == {"engine": round(cpu - bound.frame_ms, 2), "threaded": None}
    assert out["engine_of_bound"] == round(2 / 2.6, 3)
    console = Console(file=io.StringIO(), width=300)
    render_density(json.loads(json.dumps({"density": out, "machine": {}, "settings": {}})), console)
    text = console.file.getvalue()
    assert "90% of the bound is 3 streams, which is past the bound: no pipeline can sustain it" in text
    assert f"engine {cpu - bound.frame_ms:.2f}" in text and "threaded" not in text.split("beyond that work at")[1]


def test_the_budget_variant_is_reported_apart_with_its_own_ratio(tmp_path):
    from engine.tools.bench.cli import render_density
    from engine.tools.bench.density import detect_every

    out = summarize([trial("engine", 2, [300, 300]), trial("engine", 8, [200] * 8),
                     trial("budget", 2, [300, 300]), trial("budget", 8, [300] * 8)], ("engine", "budget"),
                    30.0, 10.0, (2, 8), 1)
    assert out["ratios"] == {"budget/engine": 4.0} and out["detect_fps"] == 5.0
    console = Console(file=io.StringIO(), width=200)
    render_density(json.loads(json.dumps({"density": out, "machine": {}, "settings": {}})), console)
    text = console.file.getvalue()
    assert "streams sustained at 30 FPS: engine 2" in text
    assert "5 detections/s per stream" in text and "8 streams (4.00× the every-frame engine's)" in text
    assert detect_every(30.0) == 6 and detect_every(25.0) == 5 and detect_every(3.0) == 1
    cfg = RunConfig.from_dict(read_toml_text(tmp_path, engine_config(tmp_path / "v.mp4", 2, "face", "CPU",
                                                                     tmp_path, detect_every=6)))
    assert cfg.tracking.enabled and [s.detect_every for s in cfg.sources] == [6, 6]


def read_toml_text(tmp_path, text: str) -> dict:
    path = tmp_path / "density.toml"
    path.write_text(text, encoding="utf-8")
    return read_toml(path)


def test_an_engine_is_counted_in_its_window_and_stopped(tmp_path):
    """One camera-like stream through a real engine: the window opens after the warm-up, its results
    are those results.jsonl gained in it (a looped 30 FPS clip delivers about 30 a second, across its
    loop point), start-up is reported apart, and the engine is stopped (its report written, no process left)."""
    import psutil

    from engine.tools.bench.density import run_engine

    video = write_video(tmp_path / "clip", list_images(COCO)[:8], frames=15, fps=30)   # loops every 0.5 s
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    t = run_engine(Trial("engine", 1, 0, seconds=2.0, target_fps=30.0), video, "face", "CPU", tmp_path / "out")
    assert not t.error, t.error
    assert t.startup_s is not None and t.startup_s > 0 and t.window_s >= 2.0
    assert 0.9 * 30 <= t.per_stream_fps[0] <= 1.1 * 30 and t.drops == [0]
    assert t.p95_ms is not None and t.cpu_s > 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["state"] in ("interrupted", "finished")
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
