"""ByteTrack (Zhang et al., ECCV 2022) for one stream: Kalman-predicted tracks matched to detections by IoU
in two passes, high-score detections first, then the low-score ones against the tracks still unmatched.

Follows the published ``BYTETracker.update``: (1) confirmed and lost tracks against detections scoring at
least ``high_score``, cost ``1 - IoU x score``; (2) the tracks still unmatched (not the lost ones) against
detections from ``low_score`` up to ``high_score``, cost ``1 - IoU``; (3) tentative tracks against the high
detections left; (4) a high detection left that scores ``new_track_score`` or more starts a tentative
track. Two choices differ from the reference code: an id is given when a track is confirmed (after
``min_hits`` consecutive matches), not when it starts, so ids run 1, 2, 3 ... without gaps; and a track
only matches detections of its class (``per_class``). The assignment is scipy's
``linear_sum_assignment`` with costs above a pass's limit made infeasible.

The tracker is a pure function of the detections it is given, in order: the same sequence gives the
same ids, which is how a restarted postprocessor gets its state back (see docs/design.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from engine.analytics import kalman
from engine.config import TrackingConfig
from engine.core.results import Detection

TENTATIVE, TRACKED, LOST = "tentative", "tracked", "lost"
UNCONFIRMED_MATCH_IOU = 0.3        # ByteTrack's tentative pass: distance 0.7


@dataclass
class Track:
    """One object followed over frames (the Kalman state, its class, how it was matched)."""

    mean: np.ndarray
    cov: np.ndarray
    class_id: int
    score: float
    label: str = ""
    hits: int = 1                      # consecutive frames matched
    state: str = TENTATIVE
    track_id: int | None = None        # given at confirmation
    lost_at: int = 0                   # the step it was last lost at
    box: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))

    def predict(self) -> None:
        if self.state != TRACKED:
            self.mean[7] = 0.0         # a lost track keeps its size (ByteTrack's multi_predict)
        self.mean, self.cov = kalman.predict(self.mean, self.cov)
        self.box = kalman.box_of(self.mean)

    def update(self, det: Detection) -> None:
        self.mean, self.cov = kalman.update(self.mean, self.cov, kalman.xyah(det.box))
        self.box = kalman.box_of(self.mean)
        self.score = float(det.score)
        self.hits = self.hits + 1 if self.state != LOST else 1
        if self.state == LOST:
            self.state = TRACKED


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N×4, x1 y1 x2 y2) with every box of ``b`` (M×4)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def assign(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
    """Pairs (row, column) of the cheapest assignment that uses no cost above ``limit``."""
    if not cost.size:
        return []
    capped = np.where(cost > limit, limit + 1.0, cost)
    rows, cols = linear_sum_assignment(capped)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] <= limit]


class ByteTracker:
    """The tracks of one stream; :meth:`update` takes one frame's detections and returns their ids."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.tracks: list[Track] = []
        self.step = 0
        self.next_id = 1
        self.ended: list[Track] = []       # confirmed tracks dropped by the last update (gone too long)

    def update(self, detections: Sequence[Detection]) -> list[int | None]:
        """One frame: the track id of each detection (None: matched to no confirmed track)."""
        cfg = self.cfg
        self.step += 1
        for track in self.tracks:
            track.predict()
        scores = np.array([float(d.score) for d in detections])
        high = [i for i, s in enumerate(scores) if s >= cfg.high_score]
        low = [i for i, s in enumerate(scores) if cfg.low_score <= s < cfg.high_score]
        matched: dict[int, Track] = {}                 # detection index → its track

        pool = [t for t in self.tracks if t.state in (TRACKED, LOST)]
        pairs, pool_left, high_left = self._match(pool, detections, high, 1.0 - cfg.match_iou, fuse=True)
        matched.update(pairs)
        still = [t for t in pool_left if t.state == TRACKED]
        pairs, unmatched, _ = self._match(still, detections, low, 1.0 - cfg.low_match_iou, fuse=False)
        matched.update(pairs)
        for track in unmatched:
            track.state, track.lost_at = LOST, self.step
        tentative = [t for t in self.tracks if t.state == TENTATIVE]
        pairs, dropped, high_left = self._match(tentative, detections, high_left, 1.0 - UNCONFIRMED_MATCH_IOU,
                                                fuse=True)
        matched.update(pairs)
        self._give_up(dropped)
        for i in high_left:
            if scores[i] >= cfg.new_track_score:
                det = detections[i]
                mean, cov = kalman.initiate(kalman.xyah(det.box))
                track = Track(mean, cov, int(det.class_id), float(det.score), det.label, box=kalman.box_of(mean))
                self.tracks.append(track)
                matched[i] = track
        for track in matched.values():
            if track.state == TENTATIVE and track.hits >= cfg.min_hits:
                track.state, track.track_id = TRACKED, self.next_id
                self.next_id += 1
        return [matched[i].track_id if i in matched else None for i in range(len(detections))]

    def predict(self) -> list[Detection]:
        """One frame without detections (``detect_every``): every track moves on its own; the boxes of
        the confirmed tracks that are not lost, with their ids."""
        self.step += 1
        for track in self.tracks:
            track.predict()
        self._give_up()
        return [Detection(t.label, t.class_id, t.score, t.box, track_id=t.track_id)
                for t in self.tracks if t.state == TRACKED and t.track_id is not None]

    def _give_up(self, dropped: Sequence[Track] = ()) -> None:
        """Drop ``dropped`` and the lost tracks unseen for more than ``track_buffer`` frames (these: ``ended``)."""
        gone = {id(t) for t in dropped}
        self.ended = [t for t in self.tracks if t.state == LOST and self.step - t.lost_at > self.cfg.track_buffer]
        gone |= {id(t) for t in self.ended}
        self.tracks = [t for t in self.tracks if id(t) not in gone]

    def _match(self, tracks: list[Track], detections: Sequence[Detection], candidates: list[int], limit: float,
               fuse: bool) -> tuple[dict[int, Track], list[Track], list[int]]:
        """Match ``tracks`` to the detections numbered ``candidates``; update the matched tracks.
        Returns (detection index → track, tracks left, candidates left)."""
        if not tracks or not candidates:
            return {}, list(tracks), list(candidates)
        boxes = np.array([detections[i].box for i in candidates], dtype=float)
        iou = iou_matrix(np.array([t.box for t in tracks], dtype=float), boxes)
        if fuse:
            iou = iou * np.array([float(detections[i].score) for i in candidates])[None, :]
        cost = 1.0 - iou
        if self.cfg.per_class:
            classes = np.array([int(detections[i].class_id) for i in candidates])
            cost[np.array([t.class_id for t in tracks])[:, None] != classes[None, :]] = np.inf
        pairs = assign(cost, limit)
        out: dict[int, Track] = {}
        for r, c in pairs:
            tracks[r].update(detections[candidates[c]])
            out[candidates[c]] = tracks[r]
        used_t, used_c = {r for r, _ in pairs}, {c for _, c in pairs}
        return (out, [t for k, t in enumerate(tracks) if k not in used_t],
                [i for k, i in enumerate(candidates) if k not in used_c])
