"""Shared fixtures: running `ovstream` as a user would, and checking it left nothing behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from engine.core import paths
from engine.core.results import read_results

# A test runner started in the background (`cmd &` in a script, as CI may do) inherits SIGINT
# ignored, and so would every engine it starts: Ctrl-C tests would then test nothing. Give this
# process a terminal's Ctrl-C; children it execs get the default disposition from that.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


REPO = Path(__file__).resolve().parent.parent


def shared(relative: str) -> Path:
    """``relative`` in the shared folder (``../shared`` beside the checkout, or ``OVSTREAM_SHARED``): the
    models and data the tests use but the project may not ship. Missing, the session stops at once
    with a line that says what is missing and how to provide it (never a silent skip)."""
    try:
        return paths.shared(relative)
    except FileNotFoundError as exc:
        pytest.exit(f"the tests need the shared folder: {exc}", returncode=4)


COCO = shared("data/coco_val2017_first100")      # the codelab's 100 COCO val2017 images (name = image id)
COCO_ANNOTATIONS = shared("data/coco_val2017_first100_annotations/instances_val2017_first100.json")
SAMPLES = REPO / "data" / "samples"              # the bundled sample photos
FACE_ON_COCO = ("--model", "face", "--source", str(COCO))   # the fast detector on the codelab's images


E2E_FOLDERS = ("pipeline", "faults")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark as ``e2e`` what starts engines, servers or clusters: the fast tier is ``-m 'not e2e'``."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts[0] in E2E_FOLDERS or len(parts) == 1 or "engine_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True, scope="session")
def _private_ovstream_home(tmp_path_factory):
    """The tests' OVSTREAM_HOME: what they register stays out of the user's, and a user's registry
    cannot change what the tests see (runs started by the tests inherit it)."""
    os.environ["OVSTREAM_HOME"] = str(tmp_path_factory.mktemp("ovstream-home"))
    yield


@dataclass
class RunResult:
    """What one `ovstream` invocation produced."""

    code: int
    stdout: str
    stderr: str
    output: Path

    @property
    def records(self) -> list[dict]:
        path = self.output / "results.jsonl"      # every line must be a whole FrameResult
        return [result.to_dict() for result in read_results(path, strict=True)] if path.exists() else []

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


def _held_memfds(tag: str) -> list[str]:
    """``pid: /memfd:ovstream-TAG-...`` for every open descriptor of a pool of the tagged runs
    (pools are memfds named ovstream-<run id>-<pool>, and a run id starts with the tag)."""
    held = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:            # gone, or not ours to read
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:        # closed meanwhile (the listing's own descriptor, for one)
                continue
            if link.startswith(f"/memfd:ovstream-{tag}-"):
                held.append(f"{fd_dir.parent.name}: {link}")
    return held


def _run_dirs(tag: str) -> list[Path]:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return sorted(base.glob(f"ovstream-{tag}-*"))


def leftovers(tag: str, wait_s: float = 3.0) -> list[str]:
    """What the runs tagged ``tag`` left behind: live processes, held pool memfds, run directories.
    Processes get ``wait_s`` to finish exiting (a dying process drops its memory, and with it the
    tag that identifies it, before its files: its pools' memfds go a moment later); the run
    directories are checked once they are gone."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and (_tagged_processes(tag) or _held_memfds(tag)):
        time.sleep(0.1)
    problems = [f"process left running: {' '.join(p.cmdline())}" for p in _tagged_processes(tag)]
    problems += [f"pool memory still held by pid {held}" for held in _held_memfds(tag)]
    problems += [f"run directory left: {path}" for path in _run_dirs(tag)]
    return problems


@pytest.fixture
def engine_env():
    """Environment for the runs of one test; afterwards nothing of theirs may remain:
    no process of the run, no memfd of its pools held by any process, no run directory."""
    tag = uuid.uuid4().hex[:10]
    env = dict(os.environ, OVSTREAM_TAG=tag)
    yield env
    problems = leftovers(tag)
    for proc in _tagged_processes(tag):
        proc.kill()
    assert not problems, "; ".join(problems)
