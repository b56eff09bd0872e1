"""SIGKILL any stage mid-stream: every file frame still comes out exactly once, in order."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from tests.conftest import FACE_ON_COCO, REPO, ovstream_command

FRAMES = 300          # 100 images x 3 loops


def _start(out: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(ovstream_command("run", *FACE_ON_COCO, "--loop", "3", "--output", str(out),
                                             "--no-dashboard", *extra),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_results(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    path, deadline = out / "results.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text(encoding="utf-8").count("\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} results in time")


def _check_exactly_once(out: Path) -> dict:
    ids = [json.loads(line)["frame_id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert ids == list(range(FRAMES)), f"{len(ids)} records, {len(set(ids))} distinct"
    report = json.loads((out / "report.json").read_text())
    assert report["accounting"]["balanced"] and report["accounting"]["out"] == FRAMES, report["accounting"]
    return report


@pytest.mark.parametrize("role", ["decoder", "preprocessor", "inference", "postprocessor"])
def test_sigkill_of_a_stage_loses_and_duplicates_nothing(engine_env, tmp_path, role):
    out = tmp_path / "out"
    proc = _start(out, engine_env)
    _wait_for_results(out, 60, proc)
    victims = [c for c in psutil.Process(proc.pid).children() if f"workers.{role}" in " ".join(c.cmdline())]
    victims[0].kill()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert f"{role}" in stderr and "restarting" in stderr       # the restart is reported, not hidden
    report = _check_exactly_once(out)
    restarted = {name: n for name, n in report["restarts"].items() if n}
    assert len(restarted) == 1 and next(iter(restarted)).startswith(role)


def _run_dir(tag: str) -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    found = list(base.glob(f"ovstream-{tag}-*"))
    assert len(found) == 1
    return found[0]


def test_garbage_on_engine_sockets_is_rejected_without_a_crash(engine_env, tmp_path):
    out = tmp_path / "out"
    proc = _start(out, engine_env)
    _wait_for_results(out, 30, proc)
    run_dir = _run_dir(engine_env["OVSTREAM_TAG"])
    ctx = zmq.Context()
    garbage = [b"", b"\xc1", msgpack.packb({"t": "frame", "frame": [1]}), msgpack.packb({"t": "batch"})[:-1],
               b"\x00" * (2 << 20), msgpack.packb({"t": "eos", "total": "many"}),
               msgpack.packb({"t": "release", "slots": [10 ** 6, -5]})]
    for edge in ("frames", "results", "decoder-0"):
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(f"ipc://{run_dir / (edge + '.sock')}")
        for data in garbage:
            sock.send(data)
        sock.send_multipart([msgpack.packb({"t": "result", "frames": [], "worker": "x", "device": "CPU",
                                            "outputs": [["a", "float32", [1000]]]}), b"\x00" * 10])
        sock.close()
    ctx.term()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "rejected message" in (out / "logs" / "preprocessor.log").read_text()
    report = _check_exactly_once(out)
    assert sum(report["restarts"].values()) == 0
