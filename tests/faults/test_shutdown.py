"""Stopping a run from outside: SIGINT / SIGTERM at start-up and under load, SIGKILL of the supervisor.

What the engine does (README "Exit codes"): SIGINT and SIGTERM both end the run with exit code 130
within about a second once the supervisor has started; a SIGTERM that arrives while Python is
still importing (the first ~second) kills the process by the default action (-15, the shell's 143)
before anything exists that could leak. The SIGINT-under-load case with a plain check is in
tests/pipeline/test_run.py::test_sigint_stops_everything_promptly; these add the rest.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import (
    COCO,
    FACE_ON_COCO,
    REPO,
    _held_memfds,
    _run_dirs,
    _tagged_processes,
    ovstream_command,
    run_ovstream,
)

STOP_LIMIT_S = 3.0            # the command returns within this long after the signal
EXIT_SIGTERM = (130, 143, -signal.SIGTERM)


class _Run:
    """One `ovstream run` in the background, its output in files (no pipe to fill up)."""

    def __init__(self, tmp_path: Path, env: dict, *args: str) -> None:
        self.out = tmp_path / "out"
        self.stdout_path, self.stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with open(self.stdout_path, "wb") as so, open(self.stderr_path, "wb") as se:
            self.proc = subprocess.Popen(ovstream_command("run", *FACE_ON_COCO, *args, "--output", str(self.out),
                                                          "--no-dashboard"),
                                         cwd=REPO, stdout=so, stderr=se, env=env)
        self.started = time.monotonic()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def result_lines(self) -> int:
        path = self.out / "results.jsonl"
        try:
            return path.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def records(self) -> list[dict]:
        path = self.out / "results.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []

    def wait_for(self, what: str, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}) before {what}: {self.stderr}")
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout} s")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_and_wait(self, signum: int, repeat_every: float | None = None) -> float:
        """Send ``signum`` (again every ``repeat_every`` s until it exits, like a user hammering
        Ctrl-C); the seconds until the command returned."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        while repeat_every is not None and time.monotonic() - sent < 30:
            try:
                self.proc.wait(timeout=repeat_every)
                break
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 30 s after signal {signum}: {self.stderr}") from None
        return time.monotonic() - sent

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:       # a failed wait: stop it, or the fixture reports it too
            self.proc.kill()
            self.proc.wait()


def _assert_clean_exit_message(run: _Run) -> list[str]:
    stderr = run.stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("[ovstream]")]  # progress
    assert len(lines) <= 1, stderr
    return lines


def _command_line(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:          # gone, or a zombie
        return ""


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


# ---- (a) during start-up ---------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_launch(engine_env, tmp_path, signum):
    """0.3 s after launch: the command is still importing (openvino alone takes ~1 s)."""
    with _Run(tmp_path, engine_env) as run:
        time.sleep(0.3)
        assert run.proc.poll() is None
        took = run.signal_and_wait(signum)
    assert took < STOP_LIMIT_S, f"{took:.1f} s"
    code = run.proc.returncode
    if signum == signal.SIGINT:
        assert code == 130, f"exit code {code}: {run.stderr}"
    else:
        assert code in EXIT_SIGTERM, f"exit code {code}: {run.stderr}"
    _assert_clean_exit_message(run)
    assert run.result_lines() == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_stages_start(engine_env, tmp_path, signum):
    """As soon as the stage processes exist, before any is ready: every one is stopped."""
    with _Run(tmp_path, engine_env, "--loop", "50") as run:
        run.wait_for("stage processes", lambda: any("workers." in _command_line(c) for c in run.children()),
                     timeout=60)
        assert run.result_lines() == 0
        stages = run.children()
        took = run.signal_and_wait(signum)
    assert took < STOP_LIMIT_S, f"{took:.1f} s"
    assert run.proc.returncode == 130, f"exit code {run.proc.returncode}: {run.stderr}"
    lines = _assert_clean_exit_message(run)
    assert lines and "interrupted" in lines[0], run.stderr
    assert not _alive(stages), [_command_line(p) for p in _alive(stages)]


# ---- (b) under load ----------------------------------------------------------------------------------

def _check_interrupted_outputs(run: _Run) -> None:
    """What was written is whole and in order, and the report says what happened."""
    records = run.records()
    assert [r["frame_id"] for r in records] == list(range(len(records))) and len(records) >= 20
    assert len(records) < 5000                              # stopped long before the end
    report_path = run.out / "report.json"
    assert report_path.exists(), "no report.json for the interrupted run"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["state"] == "interrupted"
    acc = report["accounting"]
    assert acc["out"] + acc["errors"] == len(records)
    assert acc["in"] == acc["out"] + acc["errors"] + acc["drops"] + acc["in_flight"], acc


def test_sigterm_under_load(engine_env, tmp_path):
    with _Run(tmp_path, engine_env, "--loop", "50") as run:
        run.wait_for("20 results", lambda: run.result_lines() >= 20)
        stages = run.children()
        assert len(stages) >= 4
        took = run.signal_and_wait(signal.SIGTERM)
    assert took < STOP_LIMIT_S, f"{took:.1f} s"
    assert run.proc.returncode == 130, f"exit code {run.proc.returncode}: {run.stderr}"
    assert _assert_clean_exit_message(run) == [f"ovstream run: interrupted by signal {int(signal.SIGTERM)}"]
    assert not _alive(stages), [_command_line(p) for p in _alive(stages)]
    _check_interrupted_outputs(run)


def test_repeated_sigint_under_load(engine_env, tmp_path):
    """A user pressing Ctrl-C again and again (every 20 ms) while the run stops: still exit 130,
    one line, the report written, nothing left."""
    with _Run(tmp_path, engine_env, "--loop", "50") as run:
        run.wait_for("20 results", lambda: run.result_lines() >= 20)
        stages = run.children()
        took = run.signal_and_wait(signal.SIGINT, repeat_every=0.02)
    assert took < STOP_LIMIT_S, f"{took:.1f} s"
    _assert_clean_exit_message(run)
    assert not _alive(stages), [_command_line(p) for p in _alive(stages)]
    _check_interrupted_outputs(run)
    assert run.proc.returncode == 130, f"exit code {run.proc.returncode}: {run.stderr}"


# ---- SIGKILL of the supervisor ---------------------------------------------------------------------

def test_sigkill_of_the_supervisor_leaves_no_stage_running(engine_env, tmp_path, record_property):
    tag = engine_env["OVSTREAM_TAG"]
    with _Run(tmp_path, engine_env, "--loop", "50") as run:
        run.wait_for("20 results", lambda: run.result_lines() >= 20)
        assert len(run.children()) >= 4
        killed = time.monotonic()
        run.proc.kill()
        run.proc.wait()
    # a dying process drops its memory (and with it what identifies it here) before its files:
    # wait for both, so a stage still in the kernel's exit is not taken for a leak
    while time.monotonic() - killed < 5 and (_tagged_processes(tag) or _held_memfds(tag)):
        time.sleep(0.05)
    survivors = _tagged_processes(tag)
    assert not survivors, f"alive 5 s after the supervisor's SIGKILL: {[p.cmdline() for p in survivors]}"
    record_property("stages_gone_after_s", round(time.monotonic() - killed, 2))

    # Pools are memfds: the kernel frees them with the last process that held them. The run
    # directory (socket files) of the killed supervisor stays until the next run starts, which
    # removes directories of dead supervisors.
    assert not _held_memfds(tag)
    assert len(_run_dirs(tag)) == 1
    one_image = tmp_path / "one"
    one_image.mkdir()
    (one_image / "a.jpg").write_bytes((COCO / "000000009378.jpg").read_bytes())
    after = run_ovstream("--model", "face", "--source", str(one_image), output=tmp_path / "next", env=engine_env)
    assert after.code == 0, after.stderr
    assert not _run_dirs(tag)
