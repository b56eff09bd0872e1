"""The live view's sink: annotated JPEGs of the streams someone watches, for ``ovstream serve``.

It runs in the postprocessor, after the other sinks. The server's side (:mod:`engine.api.live`) holds
a ZeroMQ SUB socket and subscribes to a stream (topic: its name and a NUL) while at least one
viewer watches it; this sink's XPUB socket hears those subscriptions, so a frame is drawn and
encoded only for a watched stream, and at most ``fps`` times a second per stream. Sending never
waits: a frame the socket cannot take now (the server is behind) is dropped and counted, so a slow
viewer never slows the pipeline. Figures: the counters ``view_published`` / ``view_dropped`` and the
gauge ``view_connected`` (a :class:`~engine.observe.metrics.SinkRow` named ``view``), and the gauge
``view_watched`` (streams watched now).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np
import zmq

from engine.core.results import FrameResult
from engine.io.sinks import Shape, Sink, draw, shapes_of
from engine.protocol.channels import make_socket

JPEG_QUALITY = 80
QUEUE = 4           # frames ZeroMQ may hold for the server before this sink drops


def topic(stream: str) -> bytes:
    """The subscription topic of ``stream`` (the NUL keeps ``cam`` from matching ``cam-2``)."""
    return stream.encode("utf-8", "surrogateescape") + b"\0"


class ViewSink(Sink):
    """Annotated JPEGs of watched streams to the server's live view (see the module docstring)."""

    draws = True

    def __init__(self, endpoint: str, fps: float, labels: Sequence[str] = (), shapes: Sequence[Shape] = ()) -> None:
        self._socket = make_socket(zmq.Context.instance(), zmq.XPUB, connect=endpoint, hwm=QUEUE)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)      # a full queue raises Again: the drop is counted
        self._interval = 1.0 / fps
        self._labels = labels
        self._shapes = shapes            # [tracking] lines and zones, drawn as on annotated output
        self._watched: set[bytes] = set()
        self._due: dict[bytes, float] = {}
        self._published = self._dropped = 0

    def poll(self) -> None:
        """Take the server's subscriptions (first viewer of a stream in, last one out)."""
        while not self._socket.closed:
            try:
                event = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\1":
                self._watched.add(event[1:])
            elif event[:1] == b"\0":
                self._watched.discard(event[1:])

    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        key = topic(result.stream)
        now = time.monotonic()
        if frame is None or self._socket.closed or key not in self._watched or now < self._due.get(key, 0.0):
            return
        self._due[key] = now + self._interval
        ok, jpeg = cv2.imencode(".jpg", draw(frame, result, self._labels, shapes_of(self._shapes, result.stream)),
                                (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
        if not ok:
            return
        try:
            self._socket.send_multipart((key, jpeg.tobytes()), zmq.NOBLOCK)
            self._published += 1
        except zmq.Again:
            self._dropped += 1

    def counters(self) -> dict[str, int]:
        return {"view_published": self._published, "view_dropped": self._dropped}

    def gauges(self) -> dict[str, int | float]:
        return {"view_watched": len(self._watched), "view_connected": 1}

    def close(self) -> None:
        self._socket.close(0)
