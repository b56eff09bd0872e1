"""Hostile surroundings: an output folder that cannot be written, is a file, lies below a file or is
in use by another run; a disk that fills up during the run; a stage that cannot start; Ctrl-C at
random early moments. Each ends with the exit code the README gives, one stderr line, no
traceback, and nothing left behind (the engine_env fixture checks processes, memfds, run dirs).
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import COCO, FACE_ON_COCO, REPO, RunResult, ovstream_command, run_ovstream

TIMEOUT = 60


def _one_line(result: RunResult, code: int) -> str:
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    return lines[0]


def _start(out: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(ovstream_command("run", *FACE_ON_COCO, *args, "--output", str(out), "--no-dashboard"),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if exited:
            break
        time.sleep(0.02)
    raise AssertionError(f"no {count} lines in {path} (exit {proc.poll()})")


# ---- the output folder ---------------------------------------------------------------------------

def test_output_path_that_is_a_file(engine_env, tmp_path):
    out = tmp_path / "results"
    out.write_text("keep me")
    line = _one_line(run_ovstream(*FACE_ON_COCO, output=out, env=engine_env, timeout=TIMEOUT), 2)
    assert f"output folder {out} is a file" in line, line
    assert out.read_text() == "keep me"


def test_output_path_below_a_file(engine_env, tmp_path):
    (tmp_path / "notes").write_text("a file")
    out = tmp_path / "notes" / "run1"
    line = _one_line(run_ovstream(*FACE_ON_COCO, output=out, env=engine_env, timeout=TIMEOUT), 2)
    assert f"output folder {out} is below {tmp_path / 'notes'}, which is a file" in line, line


def _without_dac_override() -> list[str]:
    """A prefix that runs a command without the power to ignore file permissions (CI runs as root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"] if setpriv else []
    if not prefix or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError("CI runs as root and cannot drop CAP_DAC_OVERRIDE with setpriv")
        pytest.skip("root here, and setpriv cannot drop CAP_DAC_OVERRIDE: permissions would not apply")
    return prefix


@pytest.mark.parametrize("inside", [False, True], ids=["the-folder", "a-new-folder-inside"])
def test_output_folder_that_is_not_writable(engine_env, tmp_path, inside):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out = locked / "run1" if inside else locked
    try:
        cmd = [*_without_dac_override(), *ovstream_command("run", *FACE_ON_COCO, "--output", str(out),
                                                           "--no-dashboard")]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, env=engine_env)
        line = _one_line(RunResult(proc.returncode, proc.stdout, proc.stderr, out), 2)
    finally:
        locked.chmod(0o755)
    assert f"output folder {out}: not writable (Permission denied)" in line, line
    assert list(locked.iterdir()) == []


def test_two_runs_on_one_folder(engine_env, tmp_path):
    """The second run is refused while the first one writes; a SIGKILLed run leaves no stale lock."""
    out = tmp_path / "out"
    first = _start(out, engine_env, "--loop", "50")
    try:
        _wait_for_lines(out / "results.jsonl", 20, first)
        line = _one_line(run_ovstream(*FACE_ON_COCO, output=out, env=engine_env, timeout=TIMEOUT), 2)
        assert f"output folder {out} is in use by another ovstream run (pid {first.pid})" in line, line
    finally:
        first.kill()                       # SIGKILL: no chance to release anything
        first.communicate()
    again = run_ovstream(*FACE_ON_COCO, output=out, env=engine_env, timeout=TIMEOUT)
    assert again.code == 0, again.stderr
    assert [r["frame_id"] for r in again.records] == list(range(100))
    assert not (out / ".ovstream.lock").exists()


# ---- a disk that fills up ------------------------------------------------------------------------

def _small_disk(path: Path) -> bool:
    """Mount a 24 MiB tmpfs at ``path``; False where mounting is not permitted."""
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(path: Path) -> None:
    chunk = b"\0" * (1 << 20)
    with open(path / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(path / "filler-tail", "wb", buffering=0) as fh:     # the last partial block too
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass


_ENOSPC_AT_THE_SINK = """
import errno, os, sys
if any(a.endswith("postprocessor.json") for a in sys.argv):
    _write, _state = os.write, {"lines": 0, "full": False}
    def _full(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
            return _write(fd, data)
        if _state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if _state["lines"] >= 60:          # the disk fills up: a short write, then ENOSPC
            _state["full"] = True
            return _write(fd, bytes(data)[:max(1, len(data) // 2)])
        _state["lines"] += bytes(data).count(b"\\n")
        return _write(fd, data)
    os.write = _full
"""


def test_disk_that_fills_during_the_run(engine_env, tmp_path):
    """One line, exit 1, within seconds; every record written is whole and in order; report.json
    says how far the run got. A real full tmpfs where mounting is permitted, else ENOSPC injected
    at the sink's write."""
    disk = tmp_path / "disk"
    mounted = _small_disk(disk)
    env = dict(engine_env)
    if not mounted:
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(_ENOSPC_AT_THE_SINK)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    out = disk / "out"
    try:
        proc = _start(out, env, "--loop", "400")
        try:
            _wait_for_lines(out / "results.jsonl", 50, proc)
            if mounted:
                _fill(disk)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        result = RunResult(proc.returncode, "", stderr, out)
        line = _one_line(result, 1)
        assert "postprocessor: cannot write to output folder" in line and "No space left on device" in line, line
        records = [json.loads(text) for text in (out / "results.jsonl").read_text().splitlines()]
        assert (out / "results.jsonl").read_bytes().endswith(b"\n")
        assert [r["frame_id"] for r in records] == list(range(len(records))) and len(records) >= 50
        report = json.loads((out / "report.json").read_text())
        assert report["state"] == "failed" and "No space left on device" in report["failure"]
        assert report["accounting"]["out"] + report["accounting"]["errors"] == len(records)
        assert sum(report["restarts"].values()) == 0, "restarted instead of stopping"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


# ---- a stage that cannot start -------------------------------------------------------------------

# A stage that exits with code CRASH_CODE (default 3) as it starts, without a word to the supervisor
# (once, with CRASH_ONCE_MARKER: the marker file remembers it did). Forked stages run the ``run`` of
# the module the supervisor imported, so the postprocessor's is wrapped there; an inference worker
# is its own interpreter and exits at once.
_CRASH_AT_START = """
import importlib.abc, importlib.machinery, os, sys

def _crash_now():
    marker = os.environ.get("CRASH_ONCE_MARKER")
    if marker and os.path.exists(marker):
        return False
    if marker:
        open(marker, "w").close()
    os._exit(int(os.environ.get("CRASH_CODE", "3")))

if os.environ["CRASH_ROLE"] == "inference" and "workers.inference" in sys.orig_argv:
    _crash_now()

class _WrapRun(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "workers." + os.environ["CRASH_ROLE"]:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            real = module.run
            module.run = lambda ctx, stage: _crash_now() or real(ctx, stage)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _WrapRun())
"""


@pytest.mark.parametrize("role", ["postprocessor", "inference"], ids=["forked", "execd"])
@pytest.mark.parametrize("once", [True, False], ids=["crashes-once", "crashes-always"])
def test_stage_that_dies_during_start_up_is_retried(engine_env, tmp_path, once, role):
    """Not a user mistake: retried like a crash, a forked stage and an exec'd inference worker
    alike; it recovers (0), or the run gives up with exit 1."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASH_AT_START)
    env = dict(engine_env, PYTHONPATH=os.pathsep.join(filter(None, [str(hook), engine_env.get("PYTHONPATH")])),
               CRASH_ROLE=role)
    if once:
        env["CRASH_ONCE_MARKER"] = str(tmp_path / "crashed")
    config = tmp_path / "c.toml"
    config.write_text(f"[source]\nuri = '{COCO}'\n[model]\nname = 'face'\n[pipeline]\nmax_restarts = 2\n")
    result = run_ovstream(str(config), output=tmp_path / "out", env=env, timeout=TIMEOUT)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    name = "inference-0" if role == "inference" else role
    retry = f"[supervisor] {name} exited during start-up with code 3; restarting"
    if once:
        assert result.code == 0, result.stderr
        assert lines == [retry]
        assert [r["frame_id"] for r in result.records] == list(range(100))
        assert result.report["restarts"][name] == 1 and result.report["accounting"]["balanced"]
    else:
        assert result.code == 1, result.stderr
        assert lines[:2] == [retry, retry] and len(lines) == 3, result.stderr
        assert lines[2].startswith(f"ovstream run: {name} could not start: exited 3 times during start-up "
                                   "(last exit code 3); see "), lines[2]


@pytest.mark.parametrize("role", ["postprocessor", "inference"], ids=["forked", "execd"])
def test_stage_that_exits_with_the_usage_code_is_never_restarted(engine_env, tmp_path, role):
    """Exit code 2 is a stage's "I reported a mistake a restart cannot fix" (a full disk, a bad
    input): even when its report is lost, the run stops with one line and exit 2, no restart."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASH_AT_START)
    env = dict(engine_env, PYTHONPATH=os.pathsep.join(filter(None, [str(hook), engine_env.get("PYTHONPATH")])),
               CRASH_ROLE=role, CRASH_CODE="2")
    config = tmp_path / "c.toml"
    config.write_text(f"[source]\nuri = '{COCO}'\n[model]\nname = 'face'\n")
    result = run_ovstream(str(config), output=tmp_path / "out", env=env, timeout=TIMEOUT)
    name = "inference-0" if role == "inference" else role
    line = _one_line(result, 2)
    assert line.startswith(f"ovstream run: {name} stopped on an error (exit code 2); see "), line


# ---- Ctrl-C at random early moments --------------------------------------------------------------

def test_ctrl_c_at_random_early_moments(engine_env, tmp_path, record_property):
    """From the first millisecond on: exit 130 with one line, nothing left. A signal that lands
    while the Python interpreter itself starts (before ovstream's first line, ~10–60 ms) is
    Python's to handle: the process dies by SIGINT (the shell's 130), Python reports it, or site's
    .pth processing swallows it; the case is told apart by no ovstream file in its output, and
    counted."""
    seed = random.randrange(1 << 30)
    record_property("seed", seed)
    rng = random.Random(seed)
    delays = [0.0, 0.02, 0.05] + sorted(rng.uniform(0.05, 1.5) for _ in range(6))
    handled = 0
    for i, delay in enumerate(delays):
        out = tmp_path / f"out{i}"
        proc = _start(out, engine_env, "--loop", "50")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"still running 30 s after SIGINT at {delay:.3f} s (seed {seed})") from None
        ours = re.search(r'File "[^"]*/(engine|workers)/', stderr) or re.search(r"^ovstream", stderr, re.M)
        if proc.returncode != 130 and not ours:
            # before ovstream's first line: the interpreter's start-up. Python dies by the signal,
            # reports it (1), or, where it lands in site's .pth processing, site prints "Error
            # processing line" and goes on without the signal: the run then ends normally (0).
            swallowed_by_site = proc.returncode == 0 and "Error processing line" in stderr
            assert proc.returncode in (-signal.SIGINT, 1) or swallowed_by_site, (delay, proc.returncode, stderr, seed)
            continue
        handled += 1
        assert proc.returncode == 130, (delay, proc.returncode, stderr, seed)
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, (delay, stderr, seed)
        assert "interrupted" in stderr, (delay, stderr, seed)
        assert not (out / ".ovstream.lock").exists()
    record_property("handled_by_ovstream", handled)
    assert handled >= 6, f"only {handled} of {len(delays)} interrupts reached ovstream (seed {seed})"
