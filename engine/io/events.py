"""events.jsonl (one :class:`~engine.core.results.Event` per line, written like results.jsonl) and
event snapshots.

:class:`EventSink` takes the events the postprocessor's tracking makes for each frame, after that
frame's record, and flushes after the results sink (it comes after it in the sink list), so
events.jsonl never holds an event of a frame that results.jsonl lacks. After a crash
:meth:`EventSink.recover` cuts a torn last line and returns the ids the file holds; the restarted
postprocessor replays results.jsonl through its trackers, which makes every event of those frames
again, and writes the ones the file lacks: each event is in the file once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from engine.core.results import Event, FrameResult, read_events
from engine.io.sinks import JsonlSink, Shape, Sink, draw, shapes_of


class EventSink(Sink):
    """Appends events to ``path`` (a :class:`JsonlSink` underneath: whole lines or none)."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self._file = JsonlSink(path, append=append)
        self.path = self._file.path

    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        """Records are not events: nothing to do."""

    def write_event(self, event: Event) -> None:
        self._file.write_line(event.to_json())

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def recover(path: str | Path) -> set[str]:
        """After a crash: cut a partial last line off ``path``; the ids of the events it holds."""
        path = Path(path)
        if not path.exists():
            return set()
        with open(path, "rb+") as fh:
            kept = 0
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                kept += len(line)
            fh.truncate(kept)
        return {event.event_id for event in read_events(path)}


class SnapshotSink(Sink):
    """``snapshots/<stream>/<frame_id>_<n>_<kind>_<track_id>.jpg`` per event: the frame on which the
    event's track scored best so far (detected frames only), with that track's box drawn (and the
    stream's lines and zones). The best frame of each track is kept as JPEG bytes in memory until the
    track leaves; after a postprocessor restart the tracks' best frames start again, and events written
    again from the replay get no snapshot (their frames are gone)."""

    draws = True

    def __init__(self, directory: str | Path, labels: Sequence[str] = (),
                 shapes: Sequence[Shape] = ()) -> None:
        self.directory = Path(directory)
        self._labels = labels
        self._shapes = shapes
        self._best: dict[tuple[str, int], tuple[float, bytes]] = {}     # (stream, track) → (score, JPEG)

    def write(self, result: FrameResult, frame: np.ndarray | None, line: str | None = None) -> None:
        if frame is None or result.predicted:
            return
        for det in result.detections or ():
            key = (result.stream, det.track_id or 0)
            if det.track_id is not None and det.score > self._best.get(key, (-1.0, b""))[0]:
                image = draw(frame, replace(result, detections=(det,)), self._labels,
                             shapes_of(self._shapes, result.stream))
                ok, data = cv2.imencode(".jpg", image)
                if not ok:
                    raise OSError(f"cannot encode the snapshot of track {det.track_id} as JPEG")
                self._best[key] = (float(det.score), data.tobytes())

    def write_event(self, event: Event) -> None:
        best = self._best.get((event.stream, event.track_id))
        if best is not None:
            folder = self.directory / _safe(event.stream)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{event.frame_id}_{event.n}_{event.kind}_{event.track_id}.jpg").write_bytes(best[1])
        if event.kind == "left":
            self._best.pop((event.stream, event.track_id), None)

    def close(self) -> None:
        self._best.clear()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "stream"
