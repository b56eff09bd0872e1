"""The records the driver holds: each frame once, whichever engines sent it.

Engines send their records to the driver through Ray (:meth:`~engine.cluster.host.EngineHost.poll`),
in batches of whole ``results.jsonl`` lines. A stream's records come in *segments*, one per
engine that ran it: ``[start_0, start_1)`` from the first engine, ``[start_1, …)`` from the one it
was moved to after the first was lost. :class:`Results` takes a record only from the stream's
current engine and only past the last frame id it holds for that stream, so a lost engine's
late batch, or a record sent twice, is never written; and when an engine is lost, the stream
resumes at ``last + 1`` of what the driver holds (what the dead node wrote but never sent is
made again by the next engine). Every frame reaches ``results.jsonl`` exactly once, in its
stream's order.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.observe.metrics import Histogram


@dataclass
class StreamTotals:
    """One stream's records held by the driver: counts, the last frame id, end-to-end latencies."""

    ok: int = 0
    errors: int = 0
    last: int = -1
    latency: Histogram = field(default_factory=Histogram)


class Results:
    """The driver's ``results.jsonl`` (``dest``; None: only counted) and what it holds per stream."""

    def __init__(self, streams: list[str], dest: Path | None) -> None:
        self.totals = {name: StreamTotals() for name in streams}
        self.file = open(dest, "wb") if dest is not None else None

    def add(self, lines: bytes, takes: Callable[[str], bool]) -> set[str]:
        """Write the records of ``lines`` (whole JSON lines) of the streams ``takes`` accepts that
        come after the stream's last held frame; returns the streams that got a record."""
        got = set()
        for line in lines.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("frame_id"), int):
                continue
            name = str(record.get("stream", ""))
            t = self.totals.get(name)
            if t is None or record["frame_id"] <= t.last or not takes(name):
                continue
            if self.file is not None:
                self.file.write(line)
            t.last = record["frame_id"]
            if record.get("status") == "error":
                t.errors += 1
            else:
                t.ok += 1
            e2e = (record.get("latency_ms") or {}).get("end_to_end")
            if isinstance(e2e, (int, float)):
                t.latency.add(float(e2e))
            got.add(name)
        if got and self.file is not None:
            self.file.flush()
        return got

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
