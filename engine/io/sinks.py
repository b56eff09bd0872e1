"""Result sinks: JSON lines, annotated images, an annotated video, and the drawing they share.

Every sink takes :class:`~engine.core.results.FrameResult` s, in frame order (see the
postprocessor); ``frame`` is the original BGR frame, or None when the result has no pixels (an
error, or a frame not kept), in which case only the JSON lines sink writes. ``line`` is the
result's :meth:`~engine.core.results.FrameResult.to_json`, made once per result for every sink
that sends text (results.jsonl, MQTT). :meth:`JsonlSink.recover` makes a restart after a crash
resume cleanly.
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from engine.config import LineConfig, OutputConfig, ZoneConfig
from engine.core.results import STATUS_ERROR, Classification, Detection, Event, FrameResult
from engine.io.sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from engine.protocol.messages import RecordMsg

if TYPE_CHECKING:
    import zmq

RED = (0, 0, 255)
WHITE = (255, 255, 255)
_PALETTE = ((56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
            (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
            (200, 149, 255), (199, 55, 255))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class Sink(ABC):
    """Where results go; ``write`` is called once per result, in frame order.

    ``draws`` sinks want the frame (and boxes in the frame's stored size); ``flush`` is called
    after each group of writes, before the frames are acknowledged as written; ``poll`` every
    turn of the postprocessor's loop. A sink that delivers elsewhere reports ``counters`` /
    ``gauges`` for the stage's stats (see :class:`~engine.observe.metrics.SinkRow`).
    """

    draws: bool = False
    replays: bool = False   # wants the records it had not delivered when its process died

    @abstractmethod
    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        """Take one result; ``line``, when given, is its :meth:`FrameResult.to_json`."""

    def write_event(self, event: Event) -> None:  # noqa: B027 (optional: most sinks take no events)
        """Take one event of the frame last written (``[tracking]``): events.jsonl, MQTT."""

    def flush(self) -> None:  # noqa: B027 (optional: most sinks have nothing to flush)
        """Make what was written durable enough to survive this process dying."""

    def poll(self) -> None:  # noqa: B027 (optional: most sinks have no background work)
        """Background work that cannot wait for the next record."""

    def counters(self) -> dict[str, int]:
        return {}

    def gauges(self) -> dict[str, int | float]:
        return {}

    @abstractmethod
    def close(self) -> None: ...


# ---- JSON lines ----------------------------------------------------------------------------------

class JsonlSink(Sink):
    """One JSON object per line, UTF-8; :meth:`flush` hands the lines written since the last flush
    to the OS in one piece, or none of them: a failed write (a full disk) is cut back to the last
    whole line and raises :class:`OSError`, so the file never holds a torn record.

    Strings that are not valid Unicode (undecodable file names) are written as ``\\udcXX`` escapes,
    which read back to the same Python string.
    """

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
        self._size = os.fstat(self._fd).st_size     # bytes of whole lines in the file
        self._lines: list[str] = []

    def write(self, result: FrameResult, frame: np.ndarray | None = None, line: str | None = None) -> None:
        self.write_line(result.to_json() if line is None else line)

    def write_line(self, line: str) -> None:
        """One JSON text, without its newline."""
        self._lines.append(line + "\n")

    def flush(self) -> None:
        data = "".join(self._lines).encode("utf-8", errors="backslashreplace")
        self._lines.clear()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            os.ftruncate(self._fd, self._size)       # no partial record stays behind
            os.lseek(self._fd, self._size, os.SEEK_SET)
            raise
        self._size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1

    @staticmethod
    def recover(path: str | Path) -> dict[str, tuple[set[int], set[int]]]:
        """After a crash: cut a partial last line off ``path``; return the frame ids it holds,
        per stream name, as (ok ids, error ids).

        A complete line that does not parse (a torn write) is left in place but not counted,
        so its frame is produced again.
        """
        path = Path(path)
        if not path.exists():
            return {}
        done: dict[str, tuple[set[int], set[int]]] = {}
        kept = 0
        with open(path, "rb+") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                kept += len(line)
                try:
                    result = FrameResult.from_json(line)
                except ValueError:
                    continue
                ok, errors = done.setdefault(result.stream, (set(), set()))
                (ok if result.ok else errors).add(result.frame_id)
            fh.truncate(kept)
        return done


# ---- drawing -------------------------------------------------------------------------------------

def _color(class_id: int) -> tuple[int, int, int]:
    return _PALETTE[class_id % len(_PALETTE)]


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode("ascii")


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int],
           scale: float, thickness: int) -> None:
    """Text on a filled box whose bottom-left corner is (x, y), moved inside the image."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    h, w = image.shape[:2]
    x = min(max(0, x), max(0, w - tw - 2))
    y = min(max(th + base + 2, y), h)
    cv2.rectangle(image, (x, y - th - base - 2), (x + tw + 2, y), color, cv2.FILLED)
    text_color = (0, 0, 0) if sum(color) > 400 else WHITE
    cv2.putText(image, text, (x + 1, y - base - 1), _FONT, scale, text_color, thickness, cv2.LINE_AA)


def _name(item: Detection | Classification, labels: Sequence[str]) -> str:
    class_id = int(item.class_id)
    label = item.label or (labels[class_id] if 0 <= class_id < len(labels) else str(class_id))
    track = f" #{item.track_id}" if isinstance(item, Detection) and item.track_id is not None else ""
    return _ascii(f"{label}{track} {float(item.score):.2f}")


def _wrap(text: str, width_px: int, scale: float, thickness: int) -> list[str]:
    char_w = max(1, cv2.getTextSize("M", _FONT, scale, thickness)[0][0])
    per_line = max(8, width_px // char_w)
    return [text[i:i + per_line] for i in range(0, len(text), per_line)] or [""]


Shape = LineConfig | ZoneConfig
YELLOW = (0, 255, 255)


def _shapes(image: np.ndarray, result: FrameResult, shapes: Sequence[Shape], scale: float, thickness: int) -> None:
    """``[tracking]`` lines and zones with their names, in the frame's pixels (relative points by the
    image's size; pixel ones by how much smaller the stored frame is than the record's)."""
    h, w = image.shape[:2]
    orig_w, orig_h = result.size or (w, h)
    for shape in shapes:
        kx, ky = (w, h) if shape.relative else (w / orig_w, h / orig_h)
        points = np.array([[round(x * kx), round(y * ky)] for x, y in shape.points], np.int32)
        cv2.polylines(image, [points], isinstance(shape, ZoneConfig), YELLOW, thickness, cv2.LINE_AA)
        _label(image, _ascii(shape.name), int(points[0][0]), int(points[0][1]), YELLOW, scale, thickness)


def draw(frame: np.ndarray, result: FrameResult, labels: Sequence[str] = (),
         shapes: Sequence[Shape] = ()) -> np.ndarray:
    """An annotated copy of ``frame``: boxes, "label score" and keypoints for detections (a tracked
    one: "label #id score", coloured by its id), the ``shapes`` (lines and zones), the top class for
    classification, the error in red for an error result."""
    image = frame.copy()
    h, w = image.shape[:2]
    scale = max(0.4, min(h, w) / 900)
    thickness = max(1, round(scale * 2))
    line_h = cv2.getTextSize("Mg", _FONT, scale, thickness)[0][1] * 2
    _shapes(image, result, shapes, scale, thickness)
    if result.status == STATUS_ERROR:
        text = _ascii(f"{result.stage}: {result.error}")
        for row, line in enumerate(_wrap(text, w - 4, scale, thickness)):
            _label(image, line, 2, (row + 1) * line_h, RED, scale, thickness)
        return image
    for det in result.detections or ():
        color = _color(int(det.class_id) if det.track_id is None else det.track_id)
        x1, y1, x2, y2 = (int(round(min(max(float(v), -1.0), 1e6))) for v in det.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        _label(image, _name(det, labels), x1, y1, color, scale, thickness)
        for x, y in det.keypoints or ():
            cv2.circle(image, (int(round(x)), int(round(y))), thickness + 2, color, cv2.FILLED)
    if result.classes:
        top = result.classes[0]
        _label(image, _name(top, labels), 2, line_h, _color(int(top.class_id)), scale, thickness)
    return image


# ---- annotated images and video ------------------------------------------------------------------

_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


class ImageSink(Sink):
    """An annotated JPEG per frame: ``<source stem>.jpg``, ``<stem>_<frame_index:06d>.jpg`` for
    video and stream frames; two sources with one stem get ``_<frame_id>`` on the later one."""

    draws = True

    def __init__(self, directory: str | Path, labels: Sequence[str] = (), shapes: Sequence[Shape] = ()) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._labels = labels
        self._shapes = shapes
        self._owner: dict[str, str] = {}   # file name → source that took it

    def file_name(self, result: FrameResult) -> str:
        source = result.source
        stem = Path(source.split("?")[0].rstrip("/")).name
        suffix = Path(stem).suffix.lower()
        still = suffix in IMAGE_EXTENSIONS
        if still or suffix in VIDEO_EXTENSIONS:
            stem = stem[:-len(suffix)]
        stem = _UNSAFE.sub("_", stem) or "frame"
        if not still:
            stem = f"{stem}_{result.frame_index:06d}"
        if self._owner.setdefault(f"{stem}.jpg", source) != source:
            stem = f"{stem}_{result.frame_id}"
        return f"{stem}.jpg"

    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        if frame is None:
            return
        ok, data = cv2.imencode(".jpg", draw(frame, result, self._labels, self._shapes))
        if not ok:
            raise OSError(f"cannot encode annotated frame {result.frame_id} as JPEG")
        data.tofile(self.directory / self.file_name(result))   # tofile: any Unicode name

    def close(self) -> None:
        self._owner.clear()


class VideoSink(Sink):
    """Annotated frames into one video (mp4v .mp4, else MJPG .avi); the first frame fixes the size
    (rounded down to even) and later frames of another size are resized to it."""

    draws = True

    def __init__(self, path: str | Path, fps: float, labels: Sequence[str] = (), shapes: Sequence[Shape] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fps = fps if fps > 0 else 25.0
        self._labels = labels
        self._shapes = shapes
        self._writer: cv2.VideoWriter | None = None
        self._size = (0, 0)

    def _open(self, width: int, height: int) -> cv2.VideoWriter:
        self._size = (max(2, width - width % 2), max(2, height - height % 2))
        for path, fourcc in ((self.path, "mp4v"), (self.path.with_suffix(".avi"), "MJPG")):
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), self._fps, self._size)
            if writer.isOpened():
                self.path = path
                return writer
            writer.release()
        raise OSError(f"cannot write video {self.path}: neither mp4v nor MJPG encoder opened")

    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        if frame is None:
            return
        if self._writer is None:
            self._writer = self._open(frame.shape[1], frame.shape[0])
        image = draw(frame, result, self._labels, self._shapes)
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class PerStream(Sink):
    """One sink per stream, made on the stream's first result by ``make(stream name)``
    (``images/<stream>/``, ``video/<stream>.mp4``)."""

    draws = True

    def __init__(self, make: Callable[[str], Sink]) -> None:
        self._make = make
        self._sinks: dict[str, Sink] = {}

    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        name = result.stream
        sink = self._sinks.get(name)
        if sink is None:
            sink = self._sinks[name] = self._make(name)
        sink.write(result, frame, line)

    def flush(self) -> None:
        for sink in self._sinks.values():
            sink.flush()

    def close(self) -> None:
        for sink in self._sinks.values():
            sink.close()
        self._sinks.clear()


# ---- a library pipeline's iterator ---------------------------------------------------------------

class ApiSink(Sink):
    """Every result to the :class:`engine.api.pipeline.Pipeline` that runs this pipeline, as a
    :class:`~engine.protocol.messages.RecordMsg` (its :meth:`~FrameResult.to_dict`, which the
    pipeline reads back with :meth:`~FrameResult.from_dict`) on a ZeroMQ PUSH socket, in order, then
    an end marker when the run has written its last result (:meth:`close`).

    It never blocks the postprocessor: records the consumer's queue cannot take yet wait in a
    FIFO, sent on the next :meth:`poll`; while more than ``limit`` wait, :attr:`backlogged` tells
    the postprocessor to take no more results, so a slow consumer slows the pipeline down (input
    slots stay held, file streams wait, live streams drop, counted) instead of filling memory.
    """

    def __init__(self, endpoint: str, limit: int = 256) -> None:
        import zmq

        from engine.protocol.channels import make_socket
        self._zmq = zmq
        self._socket: zmq.Socket | None = make_socket(zmq.Context.instance(), zmq.PUSH, connect=endpoint, hwm=limit)
        self._fifo: deque[bytes] = deque()
        self._limit = limit
        self._ended = False

    @property
    def backlogged(self) -> bool:
        return len(self._fifo) >= self._limit

    @property
    def pending(self) -> int:
        """Messages not yet handed to ZeroMQ."""
        return len(self._fifo)

    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        self._fifo.append(RecordMsg(result.to_dict()).encode())
        self.poll()

    def poll(self) -> None:
        while self._fifo and self._socket is not None:
            try:
                self._socket.send(self._fifo[0], self._zmq.NOBLOCK)
            except self._zmq.Again:
                return
            self._fifo.popleft()

    def close(self, streams: int = 0) -> None:
        """Queue the end marker, naming how many ``streams`` have ended; :meth:`poll` hands it
        over once the consumer takes it (the supervisor keeps the stages up until the API says
        it has every record of every stream)."""
        if self._socket is not None and not self._ended:
            self._ended = True
            self._fifo.append(RecordMsg({"streams": streams}, end=True).encode())
            self.poll()

    def reopen(self) -> None:
        """A stream was added after the end marker: another one follows its last record."""
        self._ended = False

    def shutdown(self) -> None:
        """Close the socket (the process is stopping); what is left is dropped with it."""
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None


def shapes_of(shapes: Sequence[Shape], stream: str) -> list[Shape]:
    """The lines and zones drawn on ``stream``'s frames: its own and those of every stream."""
    return [shape for shape in shapes if shape.stream in ("", stream)]


def open_sinks(output: OutputConfig, labels: Sequence[str] = (), resume: bool = False,
               streams: Sequence[str] = (), events: bool = False, shapes: Sequence[Shape] = ()) -> list[Sink]:
    """The sinks ``output`` asks for, in ``output.dir`` (created): one results.jsonl for the run
    (and events.jsonl after it when ``events``, with ``snapshots/<stream>/`` when ``output.snapshots``),
    annotated ``images/<stream>/`` and ``video/<stream>.mp4`` per stream (with the ``shapes`` of the
    stream drawn), MQTT. ``resume``
    appends to results.jsonl (after :meth:`JsonlSink.recover`) and events.jsonl."""

    def of(name: str) -> list[Shape]:
        return shapes_of(shapes, name)

    directory = Path(output.dir)
    directory.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink] = []
    if output.jsonl:
        sinks.append(JsonlSink(directory / "results.jsonl", append=resume))
    if events:
        from engine.io.events import EventSink, SnapshotSink  # below this module: they build on its sinks
        sinks.append(EventSink(directory / "events.jsonl", append=resume))
        if output.snapshots:
            sinks.append(SnapshotSink(directory / "snapshots", labels, shapes))
    if output.images:
        sinks.append(PerStream(lambda name: ImageSink(directory / "images" / name, labels, of(name))))
    if output.video:
        sinks.append(PerStream(lambda name: VideoSink(directory / "video" / f"{name}.mp4", output.video_fps,
                                                      labels, of(name))))
    if output.mqtt.host:
        from engine.io.mqtt import MqttSink  # paho only where a run publishes
        sinks.append(MqttSink(output.mqtt, streams))
    return sinks
