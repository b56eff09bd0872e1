"""A real Ray cluster on 127.0.0.1 for the cluster tests: ``ray start`` nodes that share no folder
with the driver.

Each node is ``ray start --block`` started inside its own mount namespace (``unshare -m``; not as
root, inside a user namespace too, ``unshare -m -r``) with a private, empty tmpfs mounted over
``hidden``: the driver's output folder is not the node's, so whatever reaches the driver's
``results.jsonl`` came through Ray.
Every node runs in its own process group and temp dir; :meth:`LocalCluster.shutdown` kills each
node's process tree by pid (never ``ray stop``, which would end every Ray process on the machine)
and removes the temp dirs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0"}
# a node's death noticed within ~2 s instead of ~30 s
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4, "health_check_timeout_ms": 1000}
START_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayNode:
    """One ``ray start --block`` and its process tree."""

    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    pids: set[int] = field(default_factory=set)

    def tree(self) -> list[psutil.Process]:
        """The node's processes now (ray start, GCS, raylet, workers, engines they started)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        self.pids.update(p.pid for p in procs)
        return procs

    def run_inside(self, *cmd: str) -> None:
        """Run ``cmd`` in the node's mount namespace: it sees (and writes) what the node sees."""
        userns = [] if os.geteuid() == 0 else ["-U", "--preserve-credentials"]
        subprocess.run(["nsenter", "-t", str(self.raylet().pid), "-m", *userns, *cmd], check=True, timeout=60)

    def raylet(self) -> psutil.Process:
        return next(p for p in self.tree() if p.name() == "raylet")

    def kill(self) -> None:
        """SIGKILL every process of the node, including those seen before and orphaned since."""
        procs = self.tree()
        for pid in self.pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait(timeout=10)


class LocalCluster:
    """A head node and worker nodes on 127.0.0.1, none of them seeing ``hidden``."""

    def __init__(self, hidden: Path, system_config: dict | None = None) -> None:
        self.hidden = hidden
        self.system_config = HEALTH if system_config is None else system_config
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[RayNode] = []
        self.base = Path(tempfile.mkdtemp(prefix="ovr", dir="/tmp"))   # short: unix socket paths live here

    def start_node(self, name: str, resources: dict, head: bool = False) -> RayNode:
        temp = self.base / name
        temp.mkdir()
        args = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                "--resources", json.dumps(resources), "--object-store-memory", str(80 << 20),
                "--temp-dir", str(temp), "--disable-usage-stats",
                "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port())]
        if head:
            args += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                     "--system-config", json.dumps(self.system_config)]
        else:
            args += ["--address", self.address]
        mount = f"mount -t tmpfs -o size=16m ovstream-hidden {self.hidden}"
        # as root a mount namespace alone; otherwise inside a user namespace of one's own (-r), which may mount
        userns = [] if os.geteuid() == 0 else ["-r"]
        cmd = ["unshare", "-m", *userns, "--propagation", "private", "sh", "-c", f'{mount} && exec "$@"', "node",
               *args]
        log = self.base / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **LOOPBACK}, start_new_session=True)
        node = RayNode(name, proc, temp, log)
        self.nodes.append(node)
        return node

    def wait_for(self, count: int) -> None:
        """Until ``count`` nodes are alive (read with ``ray status``-free means: the GCS's node table)."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited: {node.log.read_text(errors='replace')[-2000:]}")
            if self.alive() >= count:
                return
            time.sleep(1.0)
        raise RuntimeError(f"the local Ray cluster did not come up with {count} nodes in {START_S:.0f} s")

    def alive(self) -> int:
        code = (f"import ray, logging; ray.init(address={self.address!r}, logging_level=logging.ERROR, "
                "log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))")
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, **LOOPBACK})
        except subprocess.TimeoutExpired:
            return 0
        lines = out.stdout.strip().splitlines()
        return int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else 0

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.base, ignore_errors=True)
