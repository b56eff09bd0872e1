"""Shared fixtures: running `ovstream` as a user would, and checking it left nothing behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from engine.shm import SHM_DIR

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


def run_ovstream(*args: str, output: Path, env: dict | None = None, timeout: float = 240) -> RunResult:
    """`ovstream run ARGS --output OUTPUT --no-dashboard`, waited for."""
    cmd = ovstream_command("run", *args, "--output", str(output), "--no-dashboard")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    return RunResult(proc.returncode, proc.stdout, proc.stderr, output)


def _tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get("OVSTREAM_TAG") == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def engine_env():
    """Environment for the runs of one test; afterwards nothing of theirs may remain:
    no stage process, no shared-memory segment, no run directory with ipc sockets."""
    tag = uuid.uuid4().hex[:10]
    env = dict(os.environ, OVSTREAM_TAG=tag)
    yield env
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _tagged_processes(tag):
        time.sleep(0.1)
    orphans = _tagged_processes(tag)
    for proc in orphans:
        proc.kill()
    assert not orphans, f"processes left running: {[p.cmdline() for p in orphans]}"
    assert not list(SHM_DIR.glob(f"ovstream-{tag}-*")), "shared memory segments leaked"
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    assert not list(base.glob(f"ovstream-{tag}-*")), "run directory (ipc sockets) leaked"
