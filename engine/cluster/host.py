"""The engine on one node: a Ray actor that runs ``ovstream run`` for its share of the streams.

The actor is a thin keeper: :meth:`EngineHost.start` writes the share's config (JSON, the
resolved form every stage also gets) into the engine's folder *on this node* (under
``$XDG_RUNTIME_DIR`` or the temp dir, or ``[cluster] engine_dir``; never the driver's output
folder) and starts the normal
engine (``python -m engine.cli run``: the supervisor and its stage processes, shared memory and
ipc sockets inside this node, exactly as a local run). The engine writes its ``results.jsonl``
there; :meth:`EngineHost.poll` hands the driver its ``status.json`` and the next whole lines of
that file, at most :data:`BATCH_BYTES` at a time. The driver asks again only once it has written
a batch, one call per engine at a time: the records wait on the node's disk, never in memory,
and the driver is never sent more than it takes (backpressure). Once the engine has exited and
everything it wrote has been sent, ``poll`` adds its exit code, report and last log lines;
:meth:`EngineHost.stop` ends it as Ctrl-C would, :meth:`EngineHost.close` removes its folder
(one in ``[cluster] engine_dir`` stays: its logs, annotated output and own report).
Every method returns at once, so the actor serves them on its main thread.

The engine dies with the actor: it is started with ``PR_SET_PDEATHSIG`` = SIGTERM (bound to
this main thread), so when Ray kills the actor or its node, the engine's supervisor stops its
stages and removes its pools and run directory as on Ctrl-C; the stages themselves die with
the supervisor as they always do.

:func:`readable` runs as a task on a node before any file stream is placed there: which of the
run's files that node can open.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.io.run_folder import read_json_file

_PR_SET_PDEATHSIG = 1
STOP_WAIT_S = 10.0          # the supervisor stops in about a second; a compile in progress may take longer
BATCH_BYTES = 1 << 20       # records per poll: at most this many bytes of whole lines (one longer line alone)


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


def _tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def node_folder(run: str, engine: str, base: str = "") -> Path:
    """The engine's folder on this node: ``<base>/<run>/<engine>``, ``base`` by default the
    runtime or temp dir."""
    if not base:
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        if not os.access(base, os.W_OK):
            base = tempfile.gettempdir()
    return Path(base) / run / engine


def readable(paths: list[str]) -> list[str]:
    """Those of ``paths`` (files or image folders) that exist and can be read on this node."""
    return [p for p in paths if os.path.exists(p) and os.access(p, os.R_OK)]


def read_lines(path: Path, offset: int, limit: int = BATCH_BYTES) -> tuple[bytes, bool]:
    """Whole lines of ``path`` from byte ``offset``: at most ``limit`` bytes (a longer first line
    whole), and whether more whole lines follow. A missing file has none yet."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return b"", False
    with fh:
        fh.seek(offset)
        chunk = fh.read(limit)
        end = chunk.rfind(b"\n") + 1
        while end == 0 and len(chunk) >= limit:         # one line longer than the limit: read it whole
            more = fh.read(limit)
            if not more:
                break
            chunk += more
            end = chunk.rfind(b"\n") + 1
        data = chunk[:end]
        fh.seek(offset + len(data))
        while block := fh.read(1 << 16):          # more: a whole line follows
            if b"\n" in block:
                return data, True
    return data, False


class EngineHost:
    """Runs one engine process on this node (used as a Ray actor by the driver)."""

    def __init__(self, run: str, engine: str, base: str = "") -> None:
        self.folder = node_folder(run, engine, base)
        self.keep = bool(base)      # a folder the user named ([cluster] engine_dir) stays after the run
        self.proc: subprocess.Popen | None = None
        self.offset = 0             # bytes of results.jsonl sent to the driver

    def start(self, config: dict, duration_s: float = 0.0, env: dict | None = None) -> int:
        """Start the engine for ``config`` (a resolved RunConfig dict; its output folder is set
        here) and return its pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {**config, "output": {**config["output"], "dir": str(self.folder)}}
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
        """``{"pid", "returncode", "status", "records", "more"}``: the latest ``status.json``, the
        next batch of ``results.jsonl`` (bytes of whole lines) and whether more are ready. The
        exit code stays None until the engine has exited *and* all its records were sent; with
        it come its ``report`` and the last lines of its log (``tail``)."""
        if self.proc is None:
            return {"pid": 0, "returncode": None, "status": None, "records": b"", "more": False}
        code = self.proc.poll()                      # first: once exited, the file below is final
        records, more = read_lines(self.folder / "results.jsonl", self.offset)
        self.offset += len(records)
        out: dict[str, Any] = {"pid": self.proc.pid, "returncode": None if more else code, "records": records,
                               "more": more, "status": read_json_file(self.folder / "status.json")}
        if code is not None and not more:
            out["report"] = read_json_file(self.folder / "report.json")
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

    def close(self) -> None:
        """Stop the engine if it runs and remove its folder (and the run's, once empty), unless
        it is in ``[cluster] engine_dir``."""
        self.stop()
        if self.keep:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass
