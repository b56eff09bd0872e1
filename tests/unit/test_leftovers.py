"""The leftovers check of every pipeline test can fail: each of its checks is shown failing once."""
from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from engine.protocol.shm import SlotPool
from tests.conftest import leftovers


def test_a_live_process_of_the_run_is_reported():
    tag = uuid.uuid4().hex[:10]
    proc = subprocess.Popen(["sleep", "30"], env=dict(os.environ, OVSTREAM_TAG=tag))
    try:
        problems = leftovers(tag, wait_s=0)
        assert len(problems) == 1 and problems[0] == "process left running: sleep 30", problems
    finally:
        proc.kill()
        proc.wait()
    assert leftovers(tag) == []


def test_a_held_pool_memfd_is_reported():
    tag = uuid.uuid4().hex[:10]
    spec = SlotPool.create(f"{tag}-abcd", "input", 4096, 2)      # exactly as the supervisor makes a pool
    try:
        problems = leftovers(tag, wait_s=0)
        assert len(problems) == 1 and f"pid {os.getpid()}: /memfd:ovstream-{tag}-abcd-input" in problems[0], problems
    finally:
        SlotPool.unlink(spec)
    assert leftovers(tag) == []


def test_a_run_directory_is_reported():
    tag = uuid.uuid4().hex[:10]
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix=f"ovstream-{tag}-", dir=base))
    try:
        assert leftovers(tag, wait_s=0) == [f"run directory left: {path}"]
    finally:
        path.rmdir()
    assert leftovers(tag) == []
