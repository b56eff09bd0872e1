"""The server's side of the live view: JPEGs from the postprocessor's :class:`~engine.io.view.ViewSink`
handed to the MJPEG viewers of ``GET /streams/{name}/video.mjpg``.

A thread owns a ZeroMQ SUB socket bound at the pipeline's view endpoint. It subscribes to a stream
while at least one viewer watches it (so nothing is drawn or encoded for a stream nobody watches)
and gives each frame to every viewer of its stream. A viewer holds one frame: a frame that arrives
before the viewer took the last one replaces it, and the one replaced is counted as dropped, so a
slow viewer never holds up the others, the pipeline or memory.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import zmq

from engine.io.view import topic
from engine.protocol.channels import make_socket

BOUNDARY = "frame"
POLL_MS = 100


@dataclass
class ViewFigures:
    """One stream's live view: viewers now, frames handed to them, frames a slow viewer missed."""

    viewers: int = 0
    frames: int = 0
    dropped: int = 0


@dataclass
class _Viewer:
    stream: str
    loop: asyncio.AbstractEventLoop
    frames: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=1))


class LiveView:
    """See the module docstring. ``endpoint``: the pipeline's view endpoint."""

    def __init__(self, endpoint: str) -> None:
        self._context = zmq.Context()
        self._socket = make_socket(self._context, zmq.SUB, bind=endpoint, hwm=4)
        self._viewers: list[_Viewer] = []
        self._lock = threading.Lock()
        self.figures: dict[str, ViewFigures] = {}
        self._changes: queue.SimpleQueue[tuple[bool, str]] = queue.SimpleQueue()   # (subscribe?, stream)
        self._closed = threading.Event()
        self._ending = threading.Event()       # the server is stopping: viewers' streams end
        self._thread = threading.Thread(target=self._run, name="ovstream-view", daemon=True)
        self._thread.start()

    async def frames(self, stream: str) -> AsyncIterator[bytes]:
        """The stream's JPEGs as they come, until the caller stops iterating (the viewer left)."""
        viewer = _Viewer(stream, asyncio.get_running_loop())
        with self._lock:
            self._viewers.append(viewer)
            figures = self.figures.setdefault(stream, ViewFigures())
            figures.viewers += 1
            if figures.viewers == 1:
                self._changes.put((True, stream))
        try:
            while not self._ending.is_set():
                try:
                    yield await asyncio.wait_for(viewer.frames.get(), 1.0)
                except asyncio.TimeoutError:
                    continue
        finally:
            with self._lock:
                self._viewers.remove(viewer)
                figures.viewers -= 1
                if figures.viewers == 0:
                    self._changes.put((False, stream))

    def end_viewers(self) -> None:
        """End every viewer's stream (within a second): the server is stopping."""
        self._ending.set()

    def close(self) -> None:
        self._ending.set()
        self._closed.set()
        self._thread.join(timeout=2)
        self._socket.close(0)
        self._context.term()

    def _run(self) -> None:
        while not self._closed.is_set():
            while not self._changes.empty():
                subscribe, stream = self._changes.get()
                self._socket.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic(stream))
            if not self._socket.poll(POLL_MS):
                continue
            key, jpeg = self._socket.recv_multipart()
            stream = key[:-1].decode("utf-8", "surrogateescape")
            with self._lock:
                for viewer in self._viewers:
                    if viewer.stream == stream:
                        try:
                            viewer.loop.call_soon_threadsafe(self._hand, viewer, jpeg)
                        except RuntimeError:      # its event loop has closed (the server is stopping)
                            pass

    def _hand(self, viewer: _Viewer, jpeg: bytes) -> None:
        """In the viewer's event loop: the newest frame replaces one not taken yet (counted)."""
        figures = self.figures.setdefault(viewer.stream, ViewFigures())
        if viewer.frames.full():
            viewer.frames.get_nowait()
            figures.dropped += 1
        viewer.frames.put_nowait(jpeg)
        figures.frames += 1


def mjpeg_part(jpeg: bytes) -> bytes:
    """One part of a ``multipart/x-mixed-replace`` MJPEG stream."""
    return (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            + jpeg + b"\r\n")
