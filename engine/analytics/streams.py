"""Every stream's tracker: :class:`Tracking` gives the detections of each record its stream's track ids.

State is per stream name, so ids are unique within a stream and never shared across streams. Only
``ok`` records with detections step a tracker (an error record is no frame to it), and the state is a
function of those records alone, so :meth:`Tracking.rebuild` over the records a previous
postprocessor wrote (results.jsonl, in order) gives a restarted one the same state, and the same ids
for what follows.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

from engine.analytics.bytetrack import ByteTracker
from engine.analytics.zones import StreamAnalytics
from engine.config import TrackingConfig
from engine.core.results import Event, FrameResult


class Tracking:
    """Per stream, made on its first record: a :class:`~engine.analytics.bytetrack.ByteTracker` and the
    :class:`~engine.analytics.zones.StreamAnalytics` of its lines and zones."""

    def __init__(self, cfg: TrackingConfig, untracked: Iterable[str] = (),
                 per_stream: Mapping[str, TrackingConfig] | None = None) -> None:
        self.cfg = cfg
        self.untracked = frozenset(untracked)      # streams with ``track = false``: records pass unchanged
        self.per_stream = dict(per_stream or {})   # streams with their own tracker parameters
        self.trackers: dict[str, ByteTracker] = {}
        self.analytics: dict[str, StreamAnalytics] = {}

    def apply(self, record: FrameResult) -> FrameResult:
        """The record with each detection's ``track_id`` (None where no confirmed track has it)."""
        return self.step(record)[0]

    def step(self, record: FrameResult) -> tuple[FrameResult, list[Event]]:
        """The record with its track ids (a ``predicted`` one: with the tracker's boxes), and the events
        of its frame."""
        found = record.detections
        if not record.ok or found is None or record.stream in self.untracked:
            return record, []
        tracker = self.trackers.get(record.stream)
        if tracker is None:
            cfg = self.per_stream.get(record.stream, self.cfg)
            tracker = self.trackers[record.stream] = ByteTracker(cfg)
            self.analytics[record.stream] = StreamAnalytics(cfg, record.stream)
        if record.predicted:
            record = replace(record, detections=tuple(tracker.predict()))
        else:
            ids = tracker.update(found)
            record = replace(record, detections=tuple(replace(d, track_id=i) for d, i in zip(found, ids)))
        ended = [(int(t.track_id or 0), t.label, t.class_id) for t in tracker.ended]
        return record, self.analytics[record.stream].step(record, ended)

    def counts(self) -> dict[str, list[tuple[str, str, str, str, int]]]:
        """Per stream name, its lines' and zones' counts (:meth:`StreamAnalytics.counts`)."""
        return {name: area.counts() for name, area in self.analytics.items()}

    def rebuild(self, records: Iterable[FrameResult]) -> Iterator[Event]:
        """Feed records written before (each stream's in its order) to the trackers; their events."""
        for record in records:
            yield from self.step(record)[1]
