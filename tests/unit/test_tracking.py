"""The ByteTrack tracker: ids through crossings and misses, the low-score pass, confirmation, replay, and
its quality (motmetrics) on the sequence of tests/helpers/mot_sequence.py."""
from __future__ import annotations

import motmetrics as mm
import numpy as np
import pytest

from engine.analytics.bytetrack import ByteTracker, iou_matrix
from engine.config import TrackingConfig
from engine.core.results import Detection
from tests.helpers.mot_sequence import make_sequence, simulated_detections


def _det(x: float, y: float, score: float = 0.9, class_id: int = 0, size: float = 40) -> Detection:
    return Detection("x", class_id, score, (x, y, x + size, y + size))


def test_two_objects_crossing_keep_their_ids():
    tracker = ByteTracker(TrackingConfig(min_hits=1))
    seen = []
    for f in range(60):                       # one moves right, one left, one row apart: they overlap midway
        a, b = _det(10 + 4 * f, 100), _det(250 - 4 * f, 110)
        seen.append(tracker.update([b, a] if f % 2 else [a, b]))
    first = seen[0]
    for f, ids in enumerate(seen):
        assert ids == (first[::-1] if f % 2 else first), f


def test_an_id_waits_for_min_hits_and_is_never_reused():
    tracker = ByteTracker(TrackingConfig(min_hits=3, track_buffer=2))
    assert [tracker.update([_det(10 + f, 10)]) for f in range(4)] == [[None], [None], [1], [1]]
    for _ in range(4):                        # gone longer than the buffer: the track is dropped
        tracker.update([])
    ids = [tracker.update([_det(14, 10)]) for _ in range(3)]
    assert ids == [[None], [None], [2]]


def test_a_lost_track_is_found_again_within_the_buffer():
    tracker = ByteTracker(TrackingConfig(min_hits=1, track_buffer=10))
    for f in range(10):
        tracker.update([_det(10 + 2 * f, 10)])
    for _ in range(5):
        tracker.update([])
    assert tracker.update([_det(10 + 2 * 15, 10)]) == [1]


def test_low_scores_continue_tracks_but_start_none():
    tracker = ByteTracker(TrackingConfig(min_hits=1))
    assert tracker.update([_det(10, 10, 0.9)]) == [1]
    assert tracker.update([_det(11, 10, 0.3)]) == [1]           # the second pass keeps the track
    assert tracker.update([_det(12, 10, 0.3), _det(200, 200, 0.3)]) == [1, None]
    assert tracker.update([_det(300, 300, 0.05)]) == [None]     # below low_score: ignored


def test_classes_are_not_mixed_unless_asked():
    for per_class, expected in ((True, [2]), (False, [1])):      # 2: a new track of its own
        tracker = ByteTracker(TrackingConfig(min_hits=1, per_class=per_class))
        tracker.update([_det(10, 10, class_id=0)])
        assert tracker.update([_det(11, 10, class_id=1)]) == expected, per_class


def test_the_same_detections_give_the_same_ids():
    """What a restarted postprocessor relies on: a tracker fed a stream's detections again, from
    the stream's start, ends in the state the first one had."""
    frames = simulated_detections(make_sequence(render=False))
    whole, replayed = ByteTracker(TrackingConfig()), ByteTracker(TrackingConfig())
    first = [whole.update(d) for d in frames]
    for d in frames[:137]:
        replayed.update(d)
    assert [replayed.update(d) for d in frames[137:]] == first[137:]


def test_frames_between_detections_get_predicted_boxes():
    tracker = ByteTracker(TrackingConfig(min_hits=1))
    for f in range(5):
        tracker.update([_det(10 + 4 * f, 10)])
    predicted = [tracker.predict() for _ in range(3)]
    assert [[d.track_id for d in p] for p in predicted] == [[1], [1], [1]]
    xs = [p[0].box[0] for p in predicted]           # last seen at 26, moving 4 px a frame: the filter's guess
    assert 26 < xs[0] < xs[1] < xs[2] < 40, xs
    assert tracker.update([_det(42, 10)]) == [1]


def _mot_summary(cfg: TrackingConfig, detect_every: int = 1) -> dict:
    seq = make_sequence(render=False)
    tracker = ByteTracker(cfg)
    acc = mm.MOTAccumulator(auto_id=True)
    for frame, (truth, found) in enumerate(zip(seq.truth, simulated_detections(seq))):
        if frame % detect_every:
            hyp = [(d.track_id, d.box) for d in tracker.predict()]
        else:
            ids = tracker.update(found)
            hyp = [(i, d.box) for i, d in zip(ids, found) if i is not None]
        gt = list(truth)
        iou = iou_matrix(np.array([truth[g] for g in gt]).reshape(-1, 4), np.array([b for _, b in hyp]).reshape(-1, 4))
        acc.update(gt, [i for i, _ in hyp], np.where(iou >= 0.5, 1 - iou, np.nan))   # a match: IoU ≥ 0.5
    names = ["idf1", "mota", "num_switches", "num_false_positives", "num_misses", "num_objects"]
    row = mm.metrics.create().compute(acc, metrics=names, name="seq")
    return {name: float(row[name].iloc[0]) for name in names}


def test_tracking_quality_on_the_generated_sequence():
    """The figures in docs/operations.md (tracking): 5 objects, 300 frames, crossings and a pillar."""
    summary = _mot_summary(TrackingConfig())
    assert summary["idf1"] >= 0.8 and summary["num_switches"] <= 2, summary
    assert summary["mota"] >= 0.9, summary
    assert summary == pytest.approx({"idf1": 0.861, "mota": 0.925, "num_switches": 1, "num_false_positives": 0,
                                     "num_misses": 103, "num_objects": 1390}, abs=0.001), summary


def test_tracking_quality_with_one_detection_in_five_frames():
    """detect_every = 5: the tracker's predictions fill four frames in five (figures in docs/tracking.md)."""
    summary = _mot_summary(TrackingConfig(), detect_every=5)
    assert summary == pytest.approx({"idf1": 0.913, "mota": 0.838, "num_switches": 0, "num_false_positives": 15,
                                     "num_misses": 210, "num_objects": 1390}, abs=0.001), summary


def test_a_stream_takes_its_own_tracker_parameters() -> None:
    """[[sources]] tracker = { min_hits = 3 } for one camera: its ids wait three frames, the other's one."""
    from engine.analytics.streams import Tracking
    from engine.config import RunConfig
    from engine.core.results import FrameResult

    cfg = RunConfig.from_dict({"tracking": {"enabled": True, "min_hits": 1},
                               "sources": [{"uri": "a.mp4", "name": "a"},
                                           {"uri": "b.mp4", "name": "b", "tracker": {"min_hits": 3}}]})
    assert cfg.tracking_of(cfg.sources[1]).min_hits == 3 and cfg.tracking_of(cfg.sources[0]) is cfg.tracking
    tracking = Tracking(cfg.tracking, per_stream={s.name: cfg.tracking_of(s) for s in cfg.sources if s.tracker})
    ids = {name: [tracking.apply(FrameResult(name, f, "x", f, detections=(_det(10 + f, 10),))).detections[0].track_id
                  for f in range(3)] for name in ("a", "b")}
    assert ids == {"a": [1, 1, 1], "b": [None, None, 1]}


@pytest.mark.parametrize("tracker, message", [
    ({"min_hit": 3}, "stream 'cam': tracker has no parameter 'min_hit' (it takes anchor, high_score"),
    ({"min_hits": 0}, "stream 'cam': tracker min_hits:"),
    ({"low_score": 0.9}, "stream 'cam': tracker"),
])
def test_a_bad_stream_tracker_parameter_is_one_line(tracker: dict, message: str) -> None:
    from engine.config import RunConfig
    from engine.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict({"tracking": {"enabled": True}, "sources": [{"uri": "a.mp4", "name": "cam",
                                                                         "tracker": tracker}]})
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value
