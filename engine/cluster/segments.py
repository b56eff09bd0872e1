"""What the engines wrote, read back: resume points after a node failure and the final results.

Every engine writes its share of the streams to its own folder (``engines/<id>/results.jsonl``,
an ordinary run's file). A stream's records are therefore split into *segments*, one per engine
that ran it: ``[start_0, start_1)`` by the first engine, ``[start_1, start_2)`` by the one it was
moved to, and so on. When an engine dies, :func:`read_segment` finds the last complete record of
each of its streams (a torn last line, cut by the crash, does not count) and the stream resumes
at the next frame id. An engine killed a moment after it was read may still add records beyond
that point, so :func:`merge` takes from each segment only its own range: every frame comes out
exactly once, in its stream's order, whatever the timing.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.observe.metrics import Histogram


@dataclass
class Written:
    """One stream's complete records in one file: the highest frame id, and how many."""

    last: int = -1
    ok: int = 0
    errors: int = 0


@dataclass
class StreamTotals:
    """One stream's records in the merged results: counts and end-to-end latencies."""

    ok: int = 0
    errors: int = 0
    last: int = -1
    latency: Histogram = field(default_factory=Histogram)


@dataclass(frozen=True)
class Segment:
    """One engine's results file and the range ``[start, stop)`` (stop None: open) it owns of
    each of its streams."""

    path: Path
    ranges: dict[str, tuple[int, int | None]]


def complete_records(path: Path) -> Iterator[tuple[dict, bytes]]:
    """The records of a results file whose line is whole (ends with a newline and parses);
    a missing file has none."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return                      # the torn last line of a killed writer
            try:
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("frame_id"), int):
                    yield record, line
            except ValueError:
                continue


def read_segment(path: Path) -> dict[str, Written]:
    """Per stream name: the last frame id with a complete record in ``path`` and the counts."""
    out: dict[str, Written] = {}
    for record, _line in complete_records(path):
        w = out.setdefault(str(record.get("stream", "")), Written())
        w.last = max(w.last, record["frame_id"])
        if record.get("status") == "error":
            w.errors += 1
        else:
            w.ok += 1
    return out


def merge(segments: list[Segment], streams: list[str], dest: Path) -> dict[str, StreamTotals]:
    """Write ``dest``: every stream's records (``streams`` order, one stream after the other),
    each from the segments in order and only within each segment's range, so each frame id once
    and ascending. Returns per-stream totals. ``dest`` appears whole (written aside, renamed)."""
    work = dest.parent / ".merge"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    totals = {name: StreamTotals() for name in streams}
    files = {name: open(work / f"{i}.jsonl", "wb") for i, name in enumerate(streams)}
    try:
        for seg in segments:
            for record, line in complete_records(seg.path):
                name = str(record.get("stream", ""))
                if name not in seg.ranges or name not in totals:
                    continue
                start, stop = seg.ranges[name]
                fid, t = record["frame_id"], totals[name]
                if fid < start or (stop is not None and fid >= stop) or fid <= t.last:
                    continue
                files[name].write(line)
                t.last = fid
                if record.get("status") == "error":
                    t.errors += 1
                else:
                    t.ok += 1
                e2e = (record.get("latency_ms") or {}).get("end_to_end")
                if isinstance(e2e, (int, float)):
                    t.latency.add(float(e2e))
        for fh in files.values():
            fh.close()
        tmp = dest.with_name(f".{dest.name}.tmp")
        with open(tmp, "wb") as out:
            for i in range(len(streams)):
                with open(work / f"{i}.jsonl", "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        for fh in files.values():
            fh.close()
        shutil.rmtree(work, ignore_errors=True)
    return totals
