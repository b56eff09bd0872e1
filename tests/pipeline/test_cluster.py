"""Cluster mode against a real two-node Ray cluster on 127.0.0.1 (started once for the module).

Ctrl-C on the driver stops the engines on every node and leaves nothing behind; four file
streams over two nodes, every frame exactly once and in order, with one node removed mid-run (its
raylet, its workers, the engine actor and the engine's processes killed): its streams finish on
the other node, still exactly once (last: the cluster has one node after it). Ray runs in
single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0), so every node, the GCS and the driver
use the loopback address only.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from tests.conftest import COCO, REPO, ovstream_command

pytestmark = pytest.mark.cluster

STREAMS = 4
FRAMES = 40                   # images per stream folder: enough to kill a node mid-run, short on 2 cores
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}     # Ray's own switch: every address is 127.0.0.1
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "resources": {"ovstream_streams": 4},
        "object_store_memory": 100 << 20}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster") / "cams"
    folder.mkdir()
    for name in sorted(os.listdir(COCO))[:FRAMES]:
        shutil.copy(COCO / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node, each taking 4 streams; node deaths noticed within ~2 s."""
    if not os.environ.get("CI"):
        pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
    from ray.cluster_utils import Cluster
    saved = {k: os.environ.get(k) for k in LOOPBACK}
    os.environ.update(LOOPBACK)
    c = Cluster(initialize_head=True, head_node_args={
        **NODE, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    worker = c.add_node(**NODE)
    c.worker = worker
    try:
        yield c
    finally:
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_driver(cluster, env: dict, out: Path, images: Path, loop: int = 1) -> subprocess.Popen:
    logs = out.parent
    args = [a for _ in range(STREAMS) for a in ("--source", str(images))]
    cmd = ovstream_command("run", "--model", "face", "--loop", str(loop), *args, "--cluster", cluster.address,
                           "--output", str(out), "--no-dashboard")
    with open(logs / "stdout.txt", "wb") as so, open(logs / "stderr.txt", "wb") as se:
        return subprocess.Popen(cmd, cwd=REPO, stdout=so, stderr=se, env={**env, **LOOPBACK})


def frames_by_stream(out: Path) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        seen[record["stream"]].append(record["frame_id"])
    return seen


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


def test_ctrl_c_stops_every_engine_and_leaves_nothing(cluster, images, engine_env, tmp_path):
    out = tmp_path / "out"
    proc = start_driver(cluster, engine_env, out, images, loop=50)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "engines").glob("*/status.json"))) < 2:
        time.sleep(0.2)                      # an engine runs on each node, its stages up
    assert len(list((out / "engines").glob("*/status.json"))) == 2, (tmp_path / "stderr.txt").read_text()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert "interrupted" in (tmp_path / "stderr.txt").read_text()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    engines = report["cluster"]["engines"]
    assert len({e["node"] for e in engines}) == 2
    assert [(e["state"], e["exit_code"]) for e in engines] == [("stopped", 130)] * 2, "each stopped as on Ctrl-C"
    for engine in (out / "engines").iterdir():     # and wrote its report, as a local run does
        assert json.loads((engine / "report.json").read_text(encoding="utf-8"))["state"] == "interrupted"
    seen = frames_by_stream(out)                    # what was written so far, once each, in order
    assert all(ids == list(range(len(ids))) for ids in seen.values())
    deadline = time.monotonic() + 10
    while engine_hosts() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine_hosts(), "no engine actor is left"
    # engine_env's check: no engine or stage process, pool memfd or run directory is left


def test_four_streams_over_two_nodes_every_frame_once_also_when_a_node_dies(cluster, images, engine_env, tmp_path):
    """Both nodes take two streams; the worker node is removed mid-run; its two streams finish on
    the head node; every frame of every stream exactly once, in order."""
    out = tmp_path / "out"
    proc = start_driver(cluster, engine_env, out, images, loop=3)
    worker_id = cluster.worker.node_id
    deadline = time.monotonic() + 120
    mine: list[Path] = []
    while time.monotonic() < deadline:
        mine = list((out / "engines").glob(f"*-{worker_id[:6]}/results.jsonl"))
        if mine and mine[0].stat().st_size > 5_000:   # the worker node's engine has written some records
            break
        time.sleep(0.1)
    assert mine, (tmp_path / "stderr.txt").read_text()
    cluster.remove_node(cluster.worker, allow_graceful=False)    # raylet, workers, actor, engine: all gone
    assert proc.wait(timeout=180) == 0, (tmp_path / "stderr.txt").read_text()
    seen = frames_by_stream(out)
    for name, ids in seen.items():
        assert ids == list(range(3 * FRAMES)), f"{name}: not every frame exactly once, in order"
    assert sorted(seen) == ["cams", "cams-2", "cams-3", "cams-4"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    first = report["cluster"]["engines"][:2]
    assert len({e["node"] for e in first}) == 2 and [len(e["streams"]) for e in first] == [2, 2]
    assert report["accounting"]["out"] == STREAMS * 3 * FRAMES and report["accounting"]["balanced"]
    assert all(s["state"] == "ended" for s in report["streams"].values())
    assert not list((out / "engines").glob("*/results.jsonl")), "segments are joined into results.jsonl"
    lost = [e for e in report["cluster"]["events"] if e["kind"] == "engine_lost"]
    assert len(lost) == 1 and len(lost[0]["streams"]) == 2
    moved = report["cluster"]["engines"][-1]
    assert moved["node"] != lost[0]["node"] and sorted(moved["streams"]) == sorted(lost[0]["streams"])
    for name, start in lost[0]["streams"].items():
        assert report["streams"][name]["segments"][-1] == {"engine": moved["engine"], "start": start}
        assert report["streams"][name]["moves"] == 1 and 0 < start < 3 * FRAMES
    assert lost[0]["resumed_after_s"] is not None
    assert "lost" in (tmp_path / "stderr.txt").read_text()
    assert not engine_hosts(), "the engine actors end with the run"
