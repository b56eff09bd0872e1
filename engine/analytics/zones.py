"""Lines and zones of one stream: from each frame's tracked detections to events and counts.

Each confirmed track has an anchor point (the bottom centre of its box, or its centre: ``[tracking]
anchor``). A line counts a crossing when the anchor, last seen off the line on one side, is seen on the
other side and its step between the two goes through the segment: ``in`` from the line's left to its
right (walking from its first point to its second, as seen on the image), ``out`` the other way (a
point on the line is on neither side: it neither crosses nor undoes a crossing). A zone holds the
tracks whose anchor was inside at their last sighting: ``entered`` when a track is first seen inside,
``exited`` when seen outside again or when the tracker gives it up, ``dwelled`` once per visit after
``dwell_frames``. ``appeared`` is a track's first frame with its id, ``left`` the frame the tracker
gives it up at (``frames``: since it appeared). Every step depends only on the records, in order, so
a replay gives the same events and counts.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.config import LineConfig, TrackingConfig, ZoneConfig
from engine.core.results import Detection, Event, FrameResult
from engine.core.shapes import Point, inside, passes, side


def anchor(box: tuple[float, float, float, float], where: str) -> Point:
    x1, y1, x2, y2 = box
    return ((x1 + x2) / 2, y2 if where == "bottom" else (y1 + y2) / 2)


def placed(points: list[list[float]], relative: bool, size: tuple[int, int] | None) -> list[Point]:
    """A shape's points in the frame's pixels (relative ones scaled by its width and height)."""
    if not relative:
        return [(p[0], p[1]) for p in points]
    if size is None:
        raise ValueError("relative coordinates need the frame size in the record")
    return [(p[0] * size[0], p[1] * size[1]) for p in points]


@dataclass
class Seen:
    """What the analytics remember of one confirmed track."""

    label: str
    class_id: int
    first_frame: int
    point: Point
    off: dict[str, Point] = field(default_factory=dict)      # line → the last anchor off it
    zones: dict[str, int] = field(default_factory=dict)    # zone → frame id it entered at
    dwelled: set[str] = field(default_factory=set)          # zones of this visit with a dwelled event


class StreamAnalytics:
    """The lines and zones of one stream (those naming it, and those for every stream), its tracks'
    last positions, and its counts."""

    def __init__(self, cfg: TrackingConfig, stream: str) -> None:
        self.anchor = cfg.anchor
        self.stream = stream
        self.lines: list[LineConfig] = [line for line in cfg.lines if line.stream in ("", stream)]
        self.zones: list[ZoneConfig] = [zone for zone in cfg.zones if zone.stream in ("", stream)]
        self.tracks: dict[int, Seen] = {}
        self.crossings: Counter[tuple[str, str, str]] = Counter()   # (line, direction, label) → count
        self.entries: Counter[tuple[str, str]] = Counter()          # (zone, label) → count

    def occupancy(self) -> Counter[tuple[str, str]]:
        """(zone, label) → how many tracks are in the zone now."""
        return Counter((zone, seen.label) for seen in self.tracks.values() for zone in seen.zones)

    def counts(self) -> list[tuple[str, str, str, str, int]]:
        """Every count as (kind, line or zone, direction, label, value); kinds as
        :data:`engine.observe.metrics.ANALYTICS_KINDS`. A zone's occupancy stays listed at 0."""
        rows = [("crossings", line, direction, label, n) for (line, direction, label), n in self.crossings.items()]
        rows += [("zone_entries", zone, "", label, n) for (zone, label), n in self.entries.items()]
        now = self.occupancy()
        rows += [("zone_objects", zone, "", label, now.get((zone, label), 0)) for zone, label in self.entries]
        return rows

    def step(self, record: FrameResult, ended: list[tuple[int, str, int]]) -> list[Event]:
        """The events of one tracked record; ``ended``: (track id, label, class id) of the tracks the
        tracker gave up at this frame."""
        frame = record.frame_id
        events: list[Event] = []

        def event(kind: str, track: int, seen: Seen, where: str = "", direction: str = "", frames: int = 0) -> None:
            events.append(Event(self.stream, frame, len(events), kind, track, seen.label, seen.class_id,
                                where, direction, frames))

        lines = [(line, placed(line.points, line.relative, record.size)) for line in self.lines]
        zones = [(zone, placed(zone.points, zone.relative, record.size)) for zone in self.zones]
        for det in record.detections or ():
            if det.track_id is not None:
                self._track(det, frame, lines, zones, event)
        for track_id, _, _ in sorted(ended):
            seen = self.tracks.pop(track_id, None)
            if seen is None:
                continue
            for zone_name, since in seen.zones.items():
                event("exited", track_id, seen, where=zone_name, frames=frame - since)
            event("left", track_id, seen, frames=frame - seen.first_frame)
        return events

    def _track(self, det: Detection, frame: int, lines: list[tuple[LineConfig, list[Point]]],
               zones: list[tuple[ZoneConfig, list[Point]]], event: Callable[..., None]) -> None:
        """One tracked detection: its appearance, crossings and zone changes."""
        track_id = int(det.track_id or 0)
        point = anchor(det.box, self.anchor)
        seen = self.tracks.get(track_id)
        if seen is None:
            seen = self.tracks[track_id] = Seen(det.label, int(det.class_id), frame, point)
            event("appeared", track_id, seen)
        seen.point = point
        for line, (a, b) in lines:
            if line.classes and seen.label not in line.classes or side(a, b, point) == 0:
                continue
            previous = seen.off.get(line.name)
            seen.off[line.name] = point
            if previous is not None and passes(a, b, previous, point):
                direction = "in" if side(a, b, point) > 0 else "out"
                self.crossings[(line.name, direction, seen.label)] += 1
                event("crossed", track_id, seen, where=line.name, direction=direction)
        for zone, corners in zones:
            if zone.classes and seen.label not in zone.classes:
                continue
            now, was = inside(corners, point), zone.name in seen.zones
            if now and not was:
                seen.zones[zone.name] = frame
                seen.dwelled.discard(zone.name)
                self.entries[(zone.name, seen.label)] += 1
                event("entered", track_id, seen, where=zone.name)
            elif was and not now:
                event("exited", track_id, seen, where=zone.name, frames=frame - seen.zones.pop(zone.name))
            elif now and zone.dwell_frames and zone.name not in seen.dwelled \
                    and frame - seen.zones[zone.name] >= zone.dwell_frames:
                seen.dwelled.add(zone.name)
                event("dwelled", track_id, seen, where=zone.name, frames=frame - seen.zones[zone.name])
