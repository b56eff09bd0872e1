"""Lines and zones on a scripted sequence: exact crossings, entries, occupancy, dwell and the events,
the same again when the records are replayed; the shape checks of the config."""
from __future__ import annotations

import numpy as np
import pytest

from engine.analytics.streams import Tracking
from engine.config import RunConfig, TrackingConfig
from engine.core.errors import ConfigError
from engine.core.results import Detection, FrameResult
from engine.core.shapes import inside, self_intersecting

FRAMES = 100


def _cfg() -> TrackingConfig:
    return TrackingConfig.model_validate({
        "min_hits": 1, "track_buffer": 5,
        "lines": [{"name": "gate", "points": [[200, 0], [200, 400]]},                 # vertical, drawn downwards
                  {"name": "cars-only", "points": [[0, 300], [640, 300]], "classes": ["car"]},
                  {"name": "other", "stream": "cam2", "points": [[100, 0], [100, 400]]}],
        "zones": [{"name": "box", "points": [[0.5, 0.0], [1.0, 0.0], [1.0, 0.5], [0.5, 0.5]], "relative": True,
                   "dwell_frames": 30}]})


def _record(frame: int, dets: list[Detection]) -> FrameResult:
    return FrameResult("cam", frame, "v.mp4", frame, detections=tuple(dets), size=(640, 480))


def _script() -> list[FrameResult]:
    """Three people: A walks right across the gate into the box and stays; B walks left across the gate;
    C, a car, stands still left of the gate, then vanishes at frame 60."""
    records = []
    for f in range(FRAMES):
        dets = []
        ax = 100 + 5 * f if f < 80 else 495                    # on x=200 at f=20, in the box from f=44
        dets.append(Detection("person", 0, 0.9, (ax - 20, 60, ax + 20, 140)))
        if f < 70:
            bx = 300 - 4 * f                                    # crosses x=200 leftwards at f=25
            dets.append(Detection("person", 0, 0.9, (bx - 20, 300, bx + 20, 380)))
        if f < 60:
            dets.append(Detection("car", 2, 0.9, (40, 200, 120, 260)))
        records.append(_record(f, dets))
    return records


def test_counts_and_events_on_a_scripted_sequence():
    tracking = Tracking(_cfg())
    events = []
    for record in _script():
        events += tracking.step(record)[1]
    area = tracking.analytics["cam"]
    assert dict(area.crossings) == {("gate", "in", "person"): 1, ("gate", "out", "person"): 1}
    assert dict(area.entries) == {("box", "person"): 1}
    assert dict(area.occupancy()) == {("box", "person"): 1}
    seen = [(e.frame_id, e.kind, e.track_id, e.where, e.direction, e.frames) for e in events]
    a, b, car = 1, 2, 3
    assert seen == [
        (0, "appeared", a, "", "", 0), (0, "appeared", b, "", "", 0), (0, "appeared", car, "", "", 0),
        (21, "crossed", a, "gate", "out", 0),       # at 20 on the line; rightwards across a line drawn down: out
        (26, "crossed", b, "gate", "in", 0),
        (44, "entered", a, "box", "", 0),           # the box: x from 320 (0.5 of 640), y up to 240
        (66, "left", car, "", "", 66),              # last seen at 59, given up after track_buffer = 5 more
        (74, "dwelled", a, "box", "", 30),
        (76, "left", b, "", "", 76),
    ]
    assert [e.event_id for e in events[:2]] == ["cam/0/0", "cam/0/1"]


def test_a_replay_gives_the_same_events_and_counts():
    records = _script()
    first = Tracking(_cfg())
    written = [first.step(r)[0] for r in records[:50]]
    again = Tracking(_cfg())
    replayed = list(again.rebuild(written))           # the records as results.jsonl holds them
    rest_first = [e for r in records[50:] for e in first.step(r)[1]]
    rest_again = [e for r in records[50:] for e in again.step(r)[1]]
    assert rest_first == rest_again and replayed
    assert again.analytics["cam"].crossings == first.analytics["cam"].crossings


def test_shapes():
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert inside(square, (5, 5)) and not inside(square, (15, 5))
    assert not self_intersecting(square) and self_intersecting([(0, 0), (10, 10), (10, 0), (0, 10)])


@pytest.mark.parametrize("tracking, words", [
    ({"lines": [{"name": "a", "points": [[5, 5], [5, 5]]}]}, "[[tracking.lines]] #1 a: a line of zero length"),
    ({"zones": [{"name": "z", "points": [[0, 0], [9, 9], [9, 0], [0, 9]]}]}, "z: the polygon crosses itself"),
    ({"zones": [{"name": "z", "relative": True, "points": [[0, 0], [2, 0], [1, 1]]}]},
     "z: relative points must be from 0 to 1"),
    ({"zones": [{"name": "z", "points": [[0, 0], [5, 5], [10, 10]]}]}, "z: the polygon has no area"),
    ({"lines": [{"name": "a", "points": [[-1, 0], [5, 5]]}]}, "points must be a list of 2 to 2 items"),
    ({"lines": [{"name": "a", "points": [[0, 0], [5, 5]]}],
      "zones": [{"name": "a", "points": [[0, 0], [5, 0], [5, 5]]}]}, "names must differ: 'a' is used twice"),
])
def test_bad_shapes_are_one_line(tracking, words):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"tracking": tracking}, "c.toml")
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_lines_and_zones_are_drawn_where_they_are():
    from engine.io.sinks import draw

    cfg = _cfg()
    frame = np.zeros((240, 320, 3), np.uint8)           # stored at half the record's 640x480
    image = draw(frame, _record(0, []), shapes=[cfg.lines[0], cfg.zones[0]])

    def yellow(y: int, x: int) -> bool:                 # anti-aliased: mostly green and red, no blue
        b, g, r = (int(v) for v in image[y, x])
        return b == 0 and g > 100 and r > 100
    assert yellow(150, 100)                             # the gate, x=200 of 640: column 100
    assert yellow(120, 250)                             # the box's bottom edge, y=0.5 of the height
    assert not image[200, 50].any() and not image[150, 90].any()


def test_an_untracked_stream_passes_unchanged():
    tracking = Tracking(_cfg(), untracked=["cam"])
    record = _script()[0]
    assert tracking.step(record) == (record, []) and not tracking.trackers
