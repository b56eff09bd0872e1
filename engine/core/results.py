"""The result of one frame, defined once: what the postprocessor builds, the sinks write, the API yields.

A :class:`FrameResult` is one frame of one stream: where it came from, ``status`` (``ok`` or
``error``), what the model found (:class:`Detection` boxes in original frame pixels, with
keypoints where the model has them, or :class:`Classification` classes, best first) and the
milliseconds each stage took. :meth:`FrameResult.to_json` is a ``results.jsonl`` line (and an
MQTT payload); :meth:`FrameResult.from_json` and :func:`read_results` read them back. The field
order of :meth:`FrameResult.to_dict` is the line's key order, so a line read and written again
is the same text.

It is the one result type end to end: the adapters (:mod:`engine.model.adapters`) return
:class:`Detection` / :class:`Classification`, the postprocessor builds a :class:`FrameResult` per
frame from them and hands it to every sink (results.jsonl, annotated images and video, MQTT, a
library pipeline's iterator), and the API and the eval tools read the same type back.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

STATUS_OK = "ok"
STATUS_ERROR = "error"


def _plain(value: Any) -> Any:
    """JSON / msgpack for the numpy values a record may carry."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"record value of type {type(value).__name__} is not serialisable")


def encode_record(record: dict) -> str:
    """The one JSON form of a record: a results.jsonl line (without the newline), an MQTT payload."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_plain)


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: ``box`` is ``(x1, y1, x2, y2)`` in the original frame's pixels. ``track_id``
    is the object's id in its stream when ``[tracking]`` is on and the tracker has confirmed it
    (None: not tracked, or not confirmed yet; see :mod:`engine.analytics.bytetrack`)."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[tuple[float, float], ...] | None = None     # None: the model has none
    track_id: int | None = None

    def scaled(self, kx: float, ky: float) -> Detection:
        """This detection on a copy of its frame resized by ``kx`` across and ``ky`` down."""
        x1, y1, x2, y2 = self.box
        points = None if self.keypoints is None else tuple((x * kx, y * ky) for x, y in self.keypoints)
        return replace(self, box=(x1 * kx, y1 * ky, x2 * kx, y2 * ky), keypoints=points)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "class_id": self.class_id, "score": self.score,
                               "box": list(self.box)}
        if self.keypoints is not None:
            out["keypoints"] = [list(p) for p in self.keypoints]
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detection:
        points, track = d.get("keypoints"), d.get("track_id")
        return cls(str(d["label"]), int(d["class_id"]), _plain_number(d["score"]),
                   tuple(_plain_number(v) for v in d["box"]),
                   None if points is None else tuple((_plain_number(x), _plain_number(y)) for x, y in points),
                   None if track is None else int(track))


@dataclass(frozen=True, slots=True)
class Classification:
    """One class of a classifier's answer."""

    label: str
    class_id: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id, "score": self.score}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Classification:
        return cls(str(d["label"]), int(d["class_id"]), _plain_number(d["score"]))


def _plain_number(value: Any) -> Any:
    """A number as it was written (an int stays an int, so a line reads back to the same text)."""
    value = _plain(value) if isinstance(value, np.generic) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class FrameResult:
    """One frame's result. ``frame_id`` numbers the frames of ``stream`` (its position in a file
    source, counting loops); ``source`` and ``frame_index`` name the file (or URI) and the frame
    inside it. An ``error`` result names the ``stage`` that failed and the ``error``; an ``ok``
    one has ``detections`` (detectors) or ``classes`` (classifiers, best first), the ``device``
    and ``worker`` that ran it and ``latency_ms`` per stage (decode, preprocess, queue,
    inference, postprocess, end_to_end)."""

    stream: str
    frame_id: int
    source: str
    frame_index: int
    status: str = STATUS_OK
    device: str = ""
    worker: str = ""
    detections: tuple[Detection, ...] | None = None      # None for a classifier or an error
    classes: tuple[Classification, ...] | None = None    # None for a detector or an error
    latency_ms: dict[str, float] = field(default_factory=dict)
    stage: str = ""                                      # error results: where, and what
    error: str = ""
    size: tuple[int, int] | None = None                  # the frame's (width, height): tracking runs only
    predicted: bool = False                              # not detected: the tracker's boxes (detect_every)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @classmethod
    def failed(cls, stream: str, frame_id: int, source: str, frame_index: int, stage: str,
               error: str) -> FrameResult:
        return cls(stream, frame_id, source, frame_index, STATUS_ERROR, stage=stage, error=error)

    def scaled(self, kx: float, ky: float) -> FrameResult:
        """This result with its boxes and keypoints on a copy of the frame resized by ``kx`` across and
        ``ky`` down (what is drawn on a stored frame smaller than the original)."""
        if not self.detections:
            return self
        return replace(self, detections=tuple(d.scaled(kx, ky) for d in self.detections))

    def to_dict(self) -> dict[str, Any]:
        """The record, keys in results.jsonl's order."""
        out: dict[str, Any] = {"stream": self.stream, "frame_id": self.frame_id, "source": self.source,
                               "frame_index": self.frame_index, "status": self.status}
        if self.size is not None:
            out.update(width=self.size[0], height=self.size[1])
        if self.status != STATUS_OK:
            out.update(stage=self.stage, error=self.error)
            return out
        out.update(device=self.device, worker=self.worker)
        if self.predicted:
            out["predicted"] = True
        if self.classes is not None:
            out["classes"] = [c.to_dict() for c in self.classes]
        if self.detections is not None:
            out["detections"] = [d.to_dict() for d in self.detections]
        out["latency_ms"] = dict(self.latency_ms)
        return out

    def to_json(self) -> str:
        """One results.jsonl line, without the newline."""
        return encode_record(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameResult:
        """A record (a parsed results.jsonl line, an API message); ``ValueError`` if it is not one."""
        try:
            status = str(d.get("status", STATUS_OK))
            base = (str(d["stream"]), int(d["frame_id"]), str(d["source"]), int(d["frame_index"]))
            size = (int(d["width"]), int(d["height"])) if "width" in d else None
            if status != STATUS_OK:
                return cls(*base, status, stage=str(d.get("stage", "")), error=str(d.get("error", "")), size=size)
            detections = d.get("detections")
            classes = d.get("classes")
            return cls(*base, status, str(d.get("device", "")), str(d.get("worker", "")),
                       None if detections is None else tuple(Detection.from_dict(x) for x in detections),
                       None if classes is None else tuple(Classification.from_dict(x) for x in classes),
                       {str(k): _plain_number(v) for k, v in dict(d.get("latency_ms", {})).items()}, size=size,
                       predicted=d.get("predicted") is True)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a frame result: {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_json(cls, line: str | bytes) -> FrameResult:
        """One results.jsonl line; ``ValueError`` if it is not a frame result."""
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("not a frame result: not a JSON object")
        return cls.from_dict(record)


EVENT_KINDS = ("appeared", "left", "crossed", "entered", "exited", "dwelled")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a tracked object did (an ``events.jsonl`` line, an MQTT payload): ``kind`` is one of
    :data:`EVENT_KINDS`; ``where`` names the line or zone (crossed, entered, exited, dwelled);
    ``direction`` is ``in`` or ``out`` for a crossing; ``frames`` how long the object has been in the
    zone (dwelled, exited) or tracked (left). ``event_id`` (``stream/frame_id/n``: the n-th event of
    that frame) is the same however often the frame is processed: what deduplication keys on."""

    stream: str
    frame_id: int
    n: int
    kind: str
    track_id: int
    label: str
    class_id: int
    where: str = ""
    direction: str = ""
    frames: int = 0
    time: float = 0.0                     # Unix time it was written at

    @property
    def event_id(self) -> str:
        return f"{self.stream}/{self.frame_id}/{self.n}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "stream": self.stream, "frame_id": self.frame_id,
                               "kind": self.kind, "track_id": self.track_id, "label": self.label,
                               "class_id": self.class_id}
        if self.where:
            out["where"] = self.where
        if self.direction:
            out["direction"] = self.direction
        if self.frames:
            out["frames"] = self.frames
        out["time"] = self.time
        return out

    def to_json(self) -> str:
        return encode_record(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """A parsed events.jsonl line; ``ValueError`` if it is not one."""
        try:
            stream, frame_id, n = str(d["event_id"]).rsplit("/", 2)
            return cls(stream, int(frame_id), int(n), str(d["kind"]), int(d["track_id"]), str(d["label"]),
                       int(d["class_id"]), str(d.get("where", "")), str(d.get("direction", "")),
                       int(d.get("frames", 0)), float(d.get("time", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an event: {type(exc).__name__}: {exc}") from None


def read_events(path: str | Path) -> Iterator[Event]:
    """The events of an events.jsonl file, in file order (a torn line is skipped)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            try:
                yield Event.from_dict(json.loads(line))
            except ValueError:
                continue


def read_results(path: str | Path, strict: bool = False) -> Iterator[FrameResult]:
    """The results of a results.jsonl file, in file order. A line that is not a whole result (a
    torn last line after a crash) is skipped, or raises ``ValueError`` when ``strict``."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield FrameResult.from_json(line)
            except ValueError as exc:
                if strict:
                    raise ValueError(f"{path}:{number}: {exc}") from None
