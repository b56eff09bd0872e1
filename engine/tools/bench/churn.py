"""Stream churn soak: ``ovstream serve`` takes N add/remove cycles over HTTP; RSS and open files before and after.

The service runs one long stream of the images folder (looped, paced) all along. Each cycle opens
another stream of the folder (``POST /streams``) and closes it at once (``DELETE``), so the pipeline
starts, drains and frees a stream each time, and every ``MAX_STREAMS`` adds restarts its pipeline
(:meth:`engine.api.control_plane.ControlPlane.recycle`). RSS and open file descriptors of the
service and every process under it are taken after a warm-up (``WARMUP`` cycles) and after the
last cycle, once the removed streams have drained. It is not a timing test: the cycles go as fast
as the service answers.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from engine.control.launch import stage_of

WARMUP = 20
SETTLE_S = 3.0
START_TIMEOUT_S = 300


def _processes(root: psutil.Process) -> dict[str, psutil.Process]:
    """The service and every process under it, by name (``serve``, ``supervisor``, the stages)."""
    out = {"serve": root}
    for proc in root.children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        name = stage_of(cmd) or ("supervisor" if "engine.api.service" in cmd else proc.name())
        out[name] = proc
    return out


def sample(root: psutil.Process) -> dict:
    """RSS (MiB) and open file descriptors of each process, and their sums."""
    rows = {}
    for name, proc in _processes(root).items():
        try:
            rows[name] = {"rss_mib": round(proc.memory_info().rss / 2**20, 1), "fds": proc.num_fds()}
        except psutil.Error:
            continue
    return {"processes": rows, "rss_mib": round(sum(r["rss_mib"] for r in rows.values()), 1),
            "fds": sum(r["fds"] for r in rows.values())}


def churn(cycles: int, images: Path, model: str, out: Path, progress: Callable[[str], None]) -> dict:
    """Run the soak (see the module docstring); its figures."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "run" / "streams.json").unlink(missing_ok=True)      # a fresh service, not the last one resumed
    config = out / "serve.toml"
    config.write_text(f"""
[model]
name = {json.dumps(model)}
[[sources]]
uri = {json.dumps(str(images))}
name = "base"
loop = 1000000
max_fps = 5
[output]
dir = {json.dumps(str(out / "run"))}
[serve]
port = 0
max_streams = 2
roots = [{json.dumps(str(images))}]
""", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = _url(proc)
        root = psutil.Process(proc.pid)
        failures: list[str] = []
        with httpx.Client(base_url=url, timeout=120) as http:
            _wait_ready(http)
            t0 = time.monotonic()
            for i in range(WARMUP + cycles):
                if i == WARMUP:
                    time.sleep(SETTLE_S)
                    before = sample(root)
                    t0 = time.monotonic()
                added = http.post("/streams", json={"uri": str(images), "loop": 1})
                if added.status_code != 201:
                    failures.append(f"add {i}: {added.status_code} {added.text}")
                    continue
                removed = http.delete(f"/streams/{added.json()['name']}")
                if removed.status_code != 200:
                    failures.append(f"remove {i}: {removed.status_code} {removed.text}")
                if i >= WARMUP and (i - WARMUP + 1) % 100 == 0:
                    progress(f"churn: {i - WARMUP + 1}/{cycles} cycles, {len(failures)} failed")
            seconds = time.monotonic() - t0
            time.sleep(SETTLE_S)
            after = sample(root)
            status = http.get("/status").json()
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"cycles": cycles, "warmup_cycles": WARMUP, "seconds": round(seconds, 1), "failures": failures[:10],
            "failed": len(failures), "before": before, "after": after,
            "rss_change_mib": round(after["rss_mib"] - before["rss_mib"], 1),
            "fds_change": after["fds"] - before["fds"],
            "recycles": status.get("service", {}).get("recycles"), "base_stream": status.get("streams", {}).get("base"),
            "exit_code": exit_code}


def _url(proc: subprocess.Popen) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("ovstream serve: http://"):
            threading.Thread(target=proc.stderr.read, daemon=True).start()     # the rest, unread
            return line.split()[2].rstrip("/")
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"ovstream serve did not start (exit code {proc.poll()})")


def _wait_ready(http: httpx.Client) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while http.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("ovstream serve did not become ready")
        time.sleep(0.5)
