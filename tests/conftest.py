"""Shared fixtures: running `ovstream` as a user would, and checking it left nothing behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from engine.shm import leftover_segments

REPO = Path(__file__).resolve().parent.parent
COCO = REPO / "data" / "coco100"


@dataclass
class RunResult:
    """What one `ovstream` invocation produced."""

    code: int
    stdout: str
    stderr: str
    output: Path

    @property
    def records(self) -> list[dict]:
        path = self.output / "results.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []

    @property
    def report(self) -> dict:
        return json.loads((self.output / "report.json").read_text(encoding="utf-8"))


def ovstream_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def run_ovstream(*args: str, output: Path, timeout: float = 240) -> RunResult:
    """`ovstream run ARGS --output OUTPUT --no-dashboard`, waited for."""
    cmd = ovstream_command("run", *args, "--output", str(output), "--no-dashboard")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return RunResult(proc.returncode, proc.stdout, proc.stderr, output)


def _engine_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "workers." in cmdline and ("-m" in cmdline) and proc.pid != os.getpid():
            found.append(proc)
    return found


def _run_dirs() -> set[Path]:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return set(base.glob("ovstream-*"))


@pytest.fixture
def no_leftovers():
    """After the test: no shared-memory segment, ipc socket dir or stage process of ovstream."""
    shm_before, dirs_before = set(leftover_segments()), _run_dirs()
    yield
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _engine_processes():
        time.sleep(0.1)
    orphans = _engine_processes()
    for proc in orphans:
        proc.kill()
    assert not orphans, f"stage processes left running: {[p.info['cmdline'] for p in orphans]}"
    assert set(leftover_segments()) - shm_before == set(), "shared memory segments leaked"
    assert _run_dirs() - dirs_before == set(), "run directories (ipc sockets) leaked"
