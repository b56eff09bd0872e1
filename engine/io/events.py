"""events.jsonl: one :class:`~engine.core.results.Event` per line, written like results.jsonl.

:class:`EventSink` takes the events the postprocessor's tracking makes for each frame, after that
frame's record, and flushes after the results sink (it comes after it in the sink list), so
events.jsonl never holds an event of a frame that results.jsonl lacks. After a crash
:meth:`EventSink.recover` cuts a torn last line and returns the ids the file holds; the restarted
postprocessor replays results.jsonl through its trackers, which makes every event of those frames
again, and writes the ones the file lacks: each event is in the file once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.core.results import Event, FrameResult, read_events
from engine.io.sinks import JsonlSink, Sink


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
