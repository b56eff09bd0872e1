"""engine/control/launch.py: the handle of a forked stage, stage names in command lines, workers started ahead."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from engine.control.launch import ForkedProcess, Launcher, stage_of, stage_title
from tests.conftest import REPO


def _fork_sleeper(seconds: float, code: int = 0) -> ForkedProcess:
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(code)
    return ForkedProcess(pid)


def test_forked_process_reports_its_exit_code_like_popen():
    proc = _fork_sleeper(0.05, code=3)
    assert proc.wait(timeout=10) == 3 and proc.poll() == 3 and proc.returncode == 3


def test_forked_process_killed_reads_minus_the_signal_and_is_not_signalled_once_reaped():
    proc = _fork_sleeper(30)
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.05)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    proc.send_signal(signal.SIGTERM)          # reaped: its pid may belong to someone else now, so nothing is sent
    assert proc.returncode == -signal.SIGKILL


def test_a_stage_reaped_by_someone_else_reads_as_ended_not_an_error():
    """Started by a parent that ignores SIGCHLD, the kernel reaps children itself; Popen says 0."""
    proc = _fork_sleeper(0.01, code=5)
    os.waitpid(proc.pid, 0)                   # gone before the handle looked
    assert proc.poll() == 0 and proc.wait() == 0


def test_stage_of_reads_forked_titles_and_exec_command_lines():
    title = stage_title("decoder", "decoder-1")
    assert stage_of([title] + [""] * 20) == "decoder-1"                      # setproctitle: one string, NUL-padded
    assert stage_of([sys.executable, "-m", "workers.inference", "inference-0"]) == "inference-0"
    assert stage_of([sys.executable, "-m", "engine.cli", "run"]) is None
    assert stage_of([]) is None


def test_a_worker_started_ahead_waits_and_close_kills_it(monkeypatch):
    monkeypatch.chdir(REPO)
    with Launcher() as launcher:
        launcher.prestart(1)
        (proc,) = launcher._waiting.values()
        time.sleep(0.2)
        assert proc.poll() is None                                          # waiting for its context
        assert stage_of(psutil.Process(proc.pid).cmdline()) == "inference-0"
    assert proc.returncode == -signal.SIGKILL and not launcher._waiting


def test_a_worker_whose_stdin_closes_without_a_context_leaves_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "workers.inference", "inference-0"], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(b"", timeout=60)
    assert proc.returncode == 0 and out == b""


def test_forked_stages_run_opencv_without_a_thread_pool():
    code = ("import cv2; cv2.setNumThreads(4); from engine.control.launch import single_threaded_opencv; "
            "single_threaded_opencv(); print(cv2.getNumThreads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "1", out.stderr
