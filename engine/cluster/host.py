"""The engine on one node: a Ray actor that runs ``ovstream run`` for its share of the streams.

The actor is a thin keeper: :meth:`EngineHost.start` writes the share's config (JSON, the
resolved form every stage also gets) into the engine's folder and starts the normal engine
(``python -m engine.cli run``: the supervisor and its stage processes, shared memory and ipc
sockets inside this node, exactly as a local run); :meth:`EngineHost.poll` reports its
``status.json`` and, once it has exited, its exit code and report; :meth:`EngineHost.stop` ends
it as Ctrl-C would. Every method returns at once, so the actor serves them on its main thread.

The engine dies with the actor: it is started with ``PR_SET_PDEATHSIG`` = SIGTERM (bound to
this main thread), so when Ray kills the actor or its node, the engine's supervisor stops its
stages and removes its pools and run directory as on Ctrl-C; the stages themselves die with
the supervisor as they always do.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
STOP_WAIT_S = 10.0          # the supervisor stops in about a second; a compile in progress may take longer


def _die_with(parent: int):
    """A ``preexec_fn``: SIGTERM this child when the thread that started it exits."""
    def arm() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
        if os.getppid() != parent:          # the parent died before the line above
            os._exit(1)
    return arm


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class EngineHost:
    """Runs one engine process on this node (used as a Ray actor by the driver)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None

    def where(self) -> dict:
        """This actor's node (for the driver's view)."""
        import socket
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def start(self, config: dict, folder: str, duration_s: float = 0.0, env: dict | None = None) -> int:
        """Start the engine for ``config`` (a resolved RunConfig dict) writing into ``folder``;
        returns its pid."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg_path = self.folder / "config.json"
        cfg_path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        cmd = [sys.executable, "-m", "engine.cli", "run", str(cfg_path), "--no-dashboard"]
        if duration_s > 0:
            cmd += ["--duration", f"{duration_s:.3f}"]
        child_env = {**os.environ, **(env or {})}        # the same interpreter and ovstream as this actor
        with open(self.folder / "engine.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=child_env, cwd=self.folder, start_new_session=True,
                                         preexec_fn=_die_with(os.getpid()))
        return self.proc.pid

    def poll(self) -> dict:
        """``{"pid", "returncode"}`` (None while it runs), the latest ``status`` (status.json),
        and once it has exited its ``report`` and the last lines of its log (``tail``)."""
        if self.proc is None or self.folder is None:
            return {"pid": 0, "returncode": None, "status": None}
        code = self.proc.poll()
        out: dict[str, Any] = {"pid": self.proc.pid, "returncode": code,
                               "status": _read_json(self.folder / "status.json")}
        if code is not None:
            out["report"] = _read_json(self.folder / "report.json")
            out["tail"] = _tail(self.folder / "engine.log")
        return out

    def stop(self, wait_s: float = STOP_WAIT_S) -> int | None:
        """Stop the engine as Ctrl-C does (it exits 130 within about a second); SIGKILL after
        ``wait_s``. Returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
