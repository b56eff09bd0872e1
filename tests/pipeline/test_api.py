"""The Python API: `ovstream.Pipeline` runs the real engine in this process's children.

Each test tags its pipelines (OVSTREAM_TAG, inherited by the supervisor and its stages), so the
`engine_env` fixture can check that nothing is left behind: no process, no pool memfd, no run
directory (the API's own included).
"""
from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict

import psutil
import pytest

import ovstream
from tests.conftest import COCO, REPO, leftovers, run_ovstream

FACE = dict(model="face")        # the small detector: 100 COCO images in about a second


@pytest.fixture
def tag(engine_env, monkeypatch):
    """Pipelines started by the test carry the fixture's tag (checked for leftovers after it)."""
    monkeypatch.setenv("OVSTREAM_TAG", engine_env["OVSTREAM_TAG"])
    return engine_env["OVSTREAM_TAG"]


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "latency_ms"}


def test_results_are_the_cli_results_and_the_run_writes_them_too(tag, engine_env, tmp_path):
    cli = run_ovstream("--source", str(COCO), "--model", "face", output=tmp_path / "cli", env=engine_env)
    assert cli.code == 0, cli.stderr
    with ovstream.Pipeline(source=COCO, output=tmp_path / "api", **FACE) as pipe:
        results = list(pipe)
        final = pipe.stats()
    assert all(isinstance(r, ovstream.FrameResult) for r in results)
    assert [r.frame_id for r in results] == list(range(100))
    # the same run's results.jsonl holds exactly the lines the iterator handed out, byte for byte
    lines = (tmp_path / "api" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [r.to_json() for r in results] == lines
    # and the CLI finds the same things in the same frames (only the timings differ between runs)
    assert [_without_timing(json.loads(r.to_json())) for r in results] == \
        [_without_timing(record) for record in cli.records]
    faces = [d for r in results for d in r.detections]
    assert faces and all(d.label == "face" and len(d.keypoints) == 6 and d.box[2] > d.box[0] for d in faces)
    assert set(results[0].latency_ms) >= {"decode", "inference", "end_to_end"}
    # stats() after the end is the report's snapshot: balanced, every frame out
    assert final.state == "finished" and final.totals.frames_out == 100 and final.totals.balanced
    assert json.loads((tmp_path / "api" / "report.json").read_text())["accounting"]["out"] == 100


def test_break_out_of_the_loop_stops_everything(tag, tmp_path):
    with ovstream.Pipeline(source=COCO, loop=50, output=tmp_path / "out", **FACE) as pipe:
        for n, _ in enumerate(pipe):
            if n == 5:
                break
        assert pipe.running            # a `with` holds it: iterating may go on
        more = next(iter(pipe))
        assert more.frame_id == 6       # in order, nothing lost in between
    assert not pipe.running and pipe.outcome is not None
    assert leftovers(tag) == []
    # a loop over a pipeline that no `with` holds owns it: leaving the loop stops it
    for n, _ in enumerate(ovstream.Pipeline(source=COCO, loop=50, output=tmp_path / "loop", **FACE)):
        if n == 3:
            break
    assert leftovers(tag) == []


def test_a_restarted_postprocessor_hands_the_iterator_every_result_once(tag, tmp_path):
    """Records the dead postprocessor held for a slow loop (acknowledged, not yet delivered) come
    again from results.jsonl; the iterator drops the ones it already had: no gap, no repeat."""
    frames = 2000
    with ovstream.Pipeline(source=COCO, loop=20, output=tmp_path / "out", **FACE) as pipe:
        ids = []
        for result in pipe:
            ids.append(result.frame_id)
            if len(ids) == 1:
                time.sleep(5)                        # a slow loop: records queue up for it (the outlet's too)
            if len(ids) == 2:
                post = [p for p in psutil.Process().children(recursive=True)
                        if "workers.postprocessor" in " ".join(p.cmdline())]
                assert len(post) == 1
                post[0].kill()
        final = pipe.stats()
    assert ids == list(range(frames))
    assert final.totals.frames_out == frames
    assert sum(p.restarts for p in final.processes if p.name.startswith("postprocessor")) == 1


def test_an_exception_in_the_block_stops_everything_and_goes_on_up(tag, tmp_path):
    with pytest.raises(ZeroDivisionError):
        with ovstream.Pipeline(source=COCO, loop=50, output=tmp_path / "out", **FACE) as pipe:
            for _ in pipe:
                _ = 1 / 0
    assert pipe.outcome is not None and leftovers(tag) == []


def test_ctrl_c_in_the_loop_stops_everything(tag, tmp_path):
    """A notebook's Ctrl-C is SIGINT to the Python process: KeyboardInterrupt in the loop. The
    supervisor runs in its own session, so it is the `with` block that stops it, cleanly."""
    with pytest.raises(KeyboardInterrupt):
        with ovstream.Pipeline(source=COCO, loop=50, output=tmp_path / "out", **FACE) as pipe:
            for _ in pipe:
                signal.raise_signal(signal.SIGINT)
    assert pipe.outcome["exit_code"] == 0 and pipe.outcome["report"]["state"] == "stopped"
    assert leftovers(tag) == []


def test_a_pipeline_dropped_without_closing_is_stopped_by_the_garbage_collector(tag, tmp_path):
    pipe = ovstream.Pipeline(source=COCO, loop=50, output=tmp_path / "out", **FACE).start()
    assert next(iter(pipe)).frame_id == 0
    del pipe
    gc.collect()
    assert leftovers(tag) == []


def test_a_python_process_killed_with_its_pipeline_running_leaves_nothing(tag, engine_env, tmp_path):
    script = (f"import sys, time, ovstream\n"
              f"pipe = ovstream.Pipeline(source={str(COCO)!r}, loop=50, model='face', output={str(tmp_path)!r})\n"
              f"next(iter(pipe.start()))\nprint('running', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=engine_env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
    finally:
        proc.kill()                     # no finalizer, no `with`: the supervisor notices by itself
        proc.wait()
        proc.stdout.close()
    assert leftovers(tag, wait_s=15) == []


def test_two_pipelines_in_one_process(tag, tmp_path):
    with ovstream.Pipeline(source=COCO, output=tmp_path / "a", **FACE) as a, \
            ovstream.Pipeline(source=COCO, output=tmp_path / "b", **FACE) as b:
        ids: dict[str, list[int]] = defaultdict(list)
        for ra, rb in zip(a, b, strict=True):                    # interleaved: neither waits for the other's end
            ids["a"].append(ra.frame_id)
            ids["b"].append(rb.frame_id)
    assert ids["a"] == ids["b"] == list(range(100))
    assert leftovers(tag) == []


def test_a_mistake_is_one_line_before_anything_starts(tag, tmp_path):
    with pytest.raises(ovstream.ConfigError, match="no such file or folder"):
        ovstream.Pipeline(source=tmp_path / "missing", output=tmp_path / "out", **FACE).start()
    with pytest.raises(ovstream.ModelError):
        ovstream.Pipeline(source=COCO, model=str(tmp_path / "none.xml"), output=tmp_path / "out").start()
    with pytest.raises(TypeError, match="unknown option"):
        ovstream.Pipeline(source=COCO, colour="red")
    assert leftovers(tag) == []


def test_sources_added_and_removed_while_it_runs(tag, tmp_path):
    ids: dict[str, list[int]] = defaultdict(list)
    with ovstream.Pipeline(source=COCO, loop=3, output=tmp_path / "out", max_streams=3, **FACE) as pipe:
        with pytest.raises(ovstream.ConfigError, match="no such file"):
            pipe.add_source(tmp_path / "missing")
        with pytest.raises(ovstream.ConfigError, match="no open stream named 'nope'"):
            pipe.remove_source("nope")
        for result in pipe:
            ids[result.stream].append(result.frame_id)
            if len(ids[COCO.name]) == 10 and "short" not in pipe.streams:
                assert pipe.add_source(COCO, name="short", loop=1) == "short"   # plays to its end
                assert pipe.add_source(COCO, name="cut", loop=100) == "cut"  # removed part-way
            if result.stream == "cut" and result.frame_id == 19:
                running = pipe.stats()                  # the dashboard's snapshot, while it runs
                assert running.state == "running" and COCO.name in {r.name for r in running.streams}
                pipe.remove_source("cut")
                # every range is taken: the new stream gets cut's once cut's slots are all back
                assert pipe.add_source(COCO, name="swap", loop=1) == "swap"
        stats = {row.name: row for row in pipe.stats().streams}
    assert ids[COCO.name] == list(range(300))
    assert ids["short"] == ids["swap"] == list(range(100))     # every frame of an added stream, in order
    cut = ids["cut"]
    assert cut == list(range(len(cut))) and 20 <= len(cut) < 10_000       # in order, and it stopped
    row = stats["cut"]                                # what it had read came out: accounted exactly
    assert row.state == "ended" and row.frames_out == len(cut) and row.frames_in == len(cut) and row.in_flight == 0
    assert leftovers(tag) == []
