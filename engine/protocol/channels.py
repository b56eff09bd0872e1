"""ZeroMQ plumbing: the private run directory, endpoint names, and sockets made one way.

Every endpoint is an ``ipc://`` path inside a 0700 directory that only this user can enter.
Every socket gets explicit high-water marks and LINGER 0, so shutdown never blocks.

Edges (binder first):
  frames    preprocessor PULL  ◀ every decoder PUSH       FrameMsg, EndOfSource
  decoder-i decoder-i PULL     ◀ preprocessor/post PUSH   ReleaseMsg (raw slots of decoder i)
  dispatch  preprocessor ROUTER ◀▶ inference DEALER       BatchMsg ▶, CreditMsg ◀
  inputs    preprocessor PULL  ◀ postprocessor PUSH       ReleaseMsg (input slots, by batch id)
  results   postprocessor PULL ◀ every stage PUSH         ResultMsg, ErrorMsg, EndOfSource
  control   supervisor ROUTER  ◀▶ every stage DEALER      Ready/Stats/Ack/Fatal and replies ◀, commands ▶
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import zmq

EDGES = ("frames", "dispatch", "inputs", "results", "control")


class RunDir:
    """A private (0700) directory holding one run's ipc socket files and process contexts."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
            tag = os.environ.get("OVSTREAM_TAG", "")      # names one pipeline's files, e.g. in tests
            path = tempfile.mkdtemp(prefix=f"ovstream-{tag + '-' if tag else ''}",
                                    dir=base if os.access(base, os.W_OK) else None)
        self.path = Path(path)
        os.chmod(self.path, 0o700)
        (self.path / "supervisor.pid").write_text(str(os.getpid()), encoding="ascii")

    @staticmethod
    def sweep_stale() -> list[Path]:
        """Remove run directories whose supervisor is dead (it was SIGKILLed and could not)."""
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
        removed = []
        for path in base.glob("ovstream-*"):
            try:
                pid = int((path / "supervisor.pid").read_text(encoding="ascii"))
            except (OSError, ValueError):
                continue
            if pid != os.getpid() and not _alive(pid) and path.stat().st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    @property
    def run_id(self) -> str:
        return self.path.name.removeprefix("ovstream-")

    def endpoint(self, edge: str) -> str:
        return f"ipc://{self.path / (edge + '.sock')}"

    def endpoints(self, decoders: int = 1) -> dict[str, str]:
        """Every edge's endpoint, with one raw-slot release endpoint per decoder (``decoder-i``)."""
        return {edge: self.endpoint(edge) for edge in (*EDGES, *(f"decoder-{i}" for i in range(decoders)))}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_socket(ctx: zmq.Context, kind: int, *, hwm: int = 1000, identity: str | None = None,
                bind: str | None = None, connect: str | None = None) -> zmq.Socket:
    """A socket with HWM and LINGER set on purpose, bound or connected."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, 512 << 20)  # a peer cannot make us allocate without limit
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer takes over its identity
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock


def pending(sock: zmq.Socket, multipart: bool = False, copy: bool = True) -> Iterator:
    """The messages ``sock`` holds now, without waiting: ``recv(NOBLOCK)`` until there are none
    (a ``poll(0)`` before each would build a poller per message)."""
    recv = sock.recv_multipart if multipart else sock.recv
    while True:
        try:
            yield recv(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return
