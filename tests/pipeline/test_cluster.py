"""Cluster mode on a real two-node Ray cluster on 127.0.0.1 that shares no folder with the driver.

Both nodes are ``ray start`` processes in their own mount namespace with a private tmpfs over the
driver's folder (:mod:`tests.pipeline.ray_nodes`): the engines cannot write where the driver
writes, so every record in the driver's ``results.jsonl`` came through Ray. In order: every frame
exactly once, a file only the driver can read fails with one line, a folder only the worker node
has runs there; Ctrl-C on the driver
leaves nothing on any node (with ``[cluster] engine_dir``: the engines' folders where asked); the
worker node's raylet SIGKILLed mid-run, its streams resume on the head node after the last record
the driver holds (last: the cluster has one node after it).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from tests.conftest import COCO, REPO, _run_dirs, ovstream_command
from tests.pipeline.ray_nodes import LOOPBACK, LocalCluster

pytestmark = pytest.mark.cluster

STREAMS = 4
FRAMES = 30                   # images per stream folder: enough to kill a node mid-run, short on 2 cores
LOOPS = 10                    # the node-loss run's passes over them: the worker's engine still runs when killed
RESUME_S = 60.0               # a moved stream's first record reaches the driver within this after the loss
CAPACITY = {"ovstream_streams": 4}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The streams' images, in a folder every node sees."""
    folder = tmp_path_factory.mktemp("cluster") / "cams"
    folder.mkdir()
    for name in sorted(COCO.iterdir())[:FRAMES]:
        shutil.copy(name, folder / name.name)
    return folder


@pytest.fixture(scope="module")
def hidden(tmp_path_factory) -> Path:
    """The driver's folder: its outputs (and a file only it can read); no node sees into it."""
    return tmp_path_factory.mktemp("driver")


@pytest.fixture(scope="module")
def cluster(hidden):
    """A head node and a worker node, each taking 4 streams; node deaths noticed within ~2 s."""
    c = LocalCluster(hidden)
    try:
        c.start_node("head", CAPACITY, head=True)
        c.start_node("worker", CAPACITY)
        c.wait_for(2)
        yield c
    finally:
        c.shutdown()


def start_driver(cluster, env: dict, out: Path, sources: list[Path], loop: int = 1,
                 config: Path | None = None) -> subprocess.Popen:
    args = [a for source in sources for a in ("--source", str(source))]
    cmd = ovstream_command("run", *([str(config)] if config else []), "--model", "face", "--loop", str(loop), *args,
                           "--cluster", cluster.address, "--output", str(out), "--no-dashboard")
    out.mkdir(parents=True)
    with open(out.parent / f"{out.name}.stdout", "wb") as so, open(out.parent / f"{out.name}.stderr", "wb") as se:
        return subprocess.Popen(cmd, cwd=REPO, stdout=so, stderr=se, env={**env, **LOOPBACK})


def stderr_of(out: Path) -> str:
    return (out.parent / f"{out.name}.stderr").read_text(errors="replace")


def wait(proc: subprocess.Popen, out: Path, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the driver did not end within {timeout:.0f} s: {stderr_of(out)[-3000:]}")


def frames_by_stream(out: Path) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        seen[record["stream"]].append(record["frame_id"])
    return seen


def node_folders(tag: str) -> list[Path]:
    """The engines' folders on the nodes (their temp dir is this machine's)."""
    return sorted(Path(tempfile.gettempdir()).glob(f"ovstream-{tag}-cluster-*/*"))


def engine_hosts() -> list[psutil.Process]:
    """The Ray worker processes that hold an engine actor (named ray::EngineHost by Ray)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any("ray::EngineHost" in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def gone(what, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while what() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not what()


def test_every_frame_once_through_ray_and_file_streams_only_where_they_can_be_read(
        cluster, images, hidden, engine_env):
    """Four streams over two nodes, all records through Ray. A fifth stream's file is in the
    driver's folder, which no node sees: it fails with one line, the others run to the end. A
    sixth stream's folder is only on the worker node (not even on the driver): it runs there."""
    only_here = hidden / "only-here.jpg"
    shutil.copy(next(images.iterdir()), only_here)
    worker_only = hidden / "worker-only"
    cluster.nodes[1].run_inside("cp", "-r", str(images), str(worker_only))
    out = hidden / "once"
    proc = start_driver(cluster, engine_env, out, [images] * STREAMS + [only_here, worker_only])
    assert wait(proc, out, 240) == 1, stderr_of(out)
    assert f"stream only-here: no node of the Ray cluster can read {only_here} (2 node(s) asked)" in stderr_of(out)
    seen = frames_by_stream(out)
    assert sorted(seen) == ["cams", "cams-2", "cams-3", "cams-4", "worker-only"]
    for name, ids in seen.items():
        assert ids == list(range(FRAMES)), f"{name}: not every frame exactly once, in order"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    engines = report["cluster"]["engines"]
    assert len({e["node"] for e in engines}) == 2 and sorted(len(e["streams"]) for e in engines) == [2, 3]
    assert all(e["state"] == "finished" for e in engines)
    assert report["accounting"]["out"] == (STREAMS + 1) * FRAMES and report["accounting"]["balanced"]
    assert report["streams"]["only-here"]["state"] == "failed"
    assert not node_folders(engine_env["OVSTREAM_TAG"]), "each engine's folder on its node is removed"
    assert gone(engine_hosts), "the engine actors end with the run"


def test_ctrl_c_stops_every_engine_and_leaves_nothing_on_any_node(cluster, images, hidden, engine_env):
    """Ctrl-C on the driver: every engine stops as on Ctrl-C, nothing of the run is left on any
    node; with ``[cluster] engine_dir`` (a folder the nodes share) the engines' own folders stay there."""
    out = hidden / "ctrl-c"
    tag = engine_env["OVSTREAM_TAG"]
    kept = images.parent / "engines"
    config = images.parent / "engine-dir.toml"
    config.write_text(f'[cluster]\nengine_dir = "{kept}"\n', encoding="utf-8")
    proc = start_driver(cluster, engine_env, out, [images] * STREAMS, loop=50, config=config)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(kept.glob(f"ovstream-{tag}-cluster-*/*/status.json"))) < 2:
        time.sleep(0.2)                      # an engine runs on each node, its stages up
    assert len(list(kept.glob(f"ovstream-{tag}-cluster-*/*"))) == 2, stderr_of(out)
    while time.monotonic() < deadline and not (out / "results.jsonl").stat().st_size:
        time.sleep(0.2)                      # and records reach the driver
    proc.send_signal(signal.SIGINT)
    assert wait(proc, out, 60) == 130
    assert "interrupted" in stderr_of(out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    engines = report["cluster"]["engines"]
    assert len({e["node"] for e in engines}) == 2
    assert [(e["state"], e["exit_code"]) for e in engines] == [("stopped", 130)] * 2, "each stopped as on Ctrl-C"
    seen = frames_by_stream(out)             # what was written so far, once each, in order
    assert seen and all(ids == list(range(len(ids))) for ids in seen.values())
    assert sum(map(len, seen.values())) == report["accounting"]["out"]
    assert gone(engine_hosts), "no engine actor is left"
    assert sorted(e["folder"] for e in engines) == sorted(map(str, kept.glob(f"ovstream-{tag}-cluster-*/*")))
    for engine in kept.glob(f"ovstream-{tag}-cluster-*/*"):     # each wrote its report, as a local run does
        assert json.loads((engine / "report.json").read_text(encoding="utf-8"))["state"] == "interrupted"
    shutil.rmtree(kept)
    # engine_env's check: no engine or stage process, pool memfd or run directory is left on any node


def test_raylet_sigkill_mid_run_moved_streams_resume_after_what_the_driver_holds(cluster, images, hidden, engine_env):
    """The worker node's raylet is SIGKILLed while its engine runs two streams: they resume on
    the head node at the frame after the last record the driver holds, within RESUME_S;
    every frame of every stream exactly once, in order."""
    out = hidden / "sigkill"
    tag = engine_env["OVSTREAM_TAG"]
    proc = start_driver(cluster, engine_env, out, [images] * STREAMS, loop=LOOPS)
    worker = cluster.nodes[1]
    deadline = time.monotonic() + 120
    mine: list[Path] = []
    while time.monotonic() < deadline:
        mine = [p for p in node_folders(tag) if (p / "results.jsonl").exists()
                and (p / "results.jsonl").stat().st_size > 4_000 and p.name.startswith("e")]
        if len(mine) == 2 and (out / "results.jsonl").stat().st_size > 8_000:
            break                            # both engines have written, and the driver holds records
        time.sleep(0.1)
    assert len(mine) == 2, stderr_of(out)
    worker.raylet().kill()                   # SIGKILL: the node is gone without a word
    assert wait(proc, out, 240) == 0, stderr_of(out)
    seen = frames_by_stream(out)
    assert sorted(seen) == ["cams", "cams-2", "cams-3", "cams-4"]
    for name, ids in seen.items():
        assert ids == list(range(LOOPS * FRAMES)), f"{name}: not every frame exactly once, in order"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["accounting"]["out"] == STREAMS * LOOPS * FRAMES and report["accounting"]["balanced"]
    assert all(s["state"] == "ended" for s in report["streams"].values())
    lost = [e for e in report["cluster"]["events"] if e["kind"] == "engine_lost"]
    assert len(lost) == 1 and len(lost[0]["streams"]) == 2, report["cluster"]["events"]
    moved = report["cluster"]["engines"][-1]
    assert moved["node"] != lost[0]["node"] and sorted(moved["streams"]) == sorted(lost[0]["streams"])
    for name, start in lost[0]["streams"].items():
        assert report["streams"][name]["segments"][-1] == {"engine": moved["engine"], "start": start}
        assert report["streams"][name]["moves"] == 1 and 0 < start < LOOPS * FRAMES
    assert lost[0]["resumed_after_s"] is not None and lost[0]["resumed_after_s"] < RESUME_S, lost[0]
    assert "lost" in stderr_of(out)
    assert gone(engine_hosts), "the engine actors end with the run, the dead node's with it"
    left = node_folders(tag)                 # only the dead node's disk keeps its engine's folder
    assert [p.name for p in left] == [lost[0]["engine"]]
    shutil.rmtree(left[0].parent)
    # its run directory too, when its supervisor died before removing it (a real node's /tmp goes with it)
    assert len(_run_dirs(tag)) <= 1, _run_dirs(tag)
    for run_dir in _run_dirs(tag):
        shutil.rmtree(run_dir)
