"""Every stream's tracker: :class:`Tracking` gives the detections of each record its stream's track ids.

State is per stream name, so ids are unique within a stream and never shared across streams. Only
``ok`` records with detections step a tracker (an error record is no frame to it), and the state is a
function of those records alone, so :meth:`Tracking.rebuild` over the records a previous
postprocessor wrote (results.jsonl, in order) gives a restarted one the same state, and the same ids
for what follows.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from engine.analytics.bytetrack import ByteTracker
from engine.config import TrackingConfig
from engine.core.results import FrameResult


class Tracking:
    """One :class:`~engine.analytics.bytetrack.ByteTracker` per stream, made on its first record."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.trackers: dict[str, ByteTracker] = {}

    def apply(self, record: FrameResult) -> FrameResult:
        """The record with each detection's ``track_id`` (None where no confirmed track has it)."""
        if not record.ok or record.detections is None:
            return record
        tracker = self.trackers.get(record.stream)
        if tracker is None:
            tracker = self.trackers[record.stream] = ByteTracker(self.cfg)
        ids = tracker.update(record.detections)
        return replace(record, detections=tuple(replace(d, track_id=i) for d, i in zip(record.detections, ids)))

    def rebuild(self, records: Iterable[FrameResult]) -> int:
        """Feed records written before (each stream's in its order) to the trackers; how many."""
        count = 0
        for record in records:
            self.apply(record)
            count += 1
        return count
