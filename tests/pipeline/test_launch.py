"""How the stage processes start (engine/control/launch.py): forked or exec'd, named, logging to the output
folder, and nothing left of an inference worker started ahead when the checks fail."""
from __future__ import annotations

import subprocess

import psutil

from engine.control.launch import stage_of
from tests.conftest import COCO, FACE_ON_COCO, REPO, _tagged_processes, ovstream_command, run_ovstream
from tests.pipeline.test_run import _wait_for_lines

STAGES = {"decoder-0", "preprocessor", "inference-0", "postprocessor"}


def test_stages_are_named_children_that_log_to_the_output_folder(engine_env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(ovstream_command("run", *FACE_ON_COCO, "--loop", "5", "--output", str(out),
                                             "--no-dashboard", "--log-level", "DEBUG"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env)
    _wait_for_lines(out / "results.jsonl", 20, proc)
    children = psutil.Process(proc.pid).children()
    names = {stage_of(child.cmdline()): child for child in children}
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert set(names) == STAGES, [child.cmdline() for child in children]      # `ps` tells them apart
    for name in STAGES:                      # every stage's own records, in its own format, in its own file
        log = (out / "logs" / f"{name}.log").read_text(encoding="utf-8")
        assert f"[{name}] pid {names[name].pid}, generation 0" in log, log
        assert f"[{name}]" not in stderr     # none went to the command's stderr


def test_a_failed_check_leaves_no_inference_worker_started_ahead(engine_env, tmp_path):
    """The worker is started before the checks; the source is found missing by them (exit 2):
    the worker is gone by the time the command returns, and it wrote nothing."""
    result = run_ovstream("--model", "face", "--source", str(tmp_path / "missing"), output=tmp_path / "out",
                          env=engine_env, timeout=60)
    assert result.code == 2, result.stderr
    assert "no such file or folder" in result.stderr
    assert not _tagged_processes(engine_env["OVSTREAM_TAG"])       # no grace: killed and reaped, not left to exit
    assert not (tmp_path / "out").exists()


def test_what_a_worker_logs_before_its_context_lands_in_its_log(engine_env, tmp_path):
    """The worker compiles as soon as it has the config, before it knows its log file: a warning
    then (a damaged model-cache entry, read again from the original) is kept and written there."""
    config = tmp_path / "c.toml"
    config.write_text(f"[source]\nuri = '{COCO}'\n[model]\nname = 'face'\n[inference]\ncache_dir = 'cache'\n")
    first = run_ovstream(str(config), output=tmp_path / "first", env=engine_env, timeout=120)
    assert first.code == 0, first.stderr
    (entry,) = (tmp_path / "cache" / "models").iterdir()
    (entry / "model.xml").write_text("<net>damaged</net>")
    second = run_ovstream(str(config), output=tmp_path / "second", env=engine_env, timeout=120)
    assert second.code == 0, second.stderr
    log = (tmp_path / "second" / "logs" / "inference-0.log").read_text(encoding="utf-8")
    assert "[inference-0] the cached model" in log and "did not compile" in log, log
    assert len(second.records) == 100
