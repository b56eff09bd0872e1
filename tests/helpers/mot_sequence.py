"""A tracking test sequence made here: crops of the bundled photos moving and crossing over a background,
passing behind a pillar and in front of each other, with the true trajectory of every object.

:func:`make_sequence` renders the frames (BGR, 640×480) in depth order and measures each object's
visible fraction from the rendered masks; :func:`simulated_detections` turns that into what a detector
would report: the visible part's box with jitter, a score that falls with occlusion, misses, and false
positives (seeded, so the sequence and the figures are the same on every machine). The ground truth
is the visible box of every object at least ``MIN_VISIBLE`` visible (what a detector could be asked
to find).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.core.results import Detection
from tests.conftest import SAMPLES

WIDTH, HEIGHT, FRAMES = 640, 480, 300
MIN_VISIBLE = 0.2
PILLAR = (420, 465)              # x range of the occluding pillar (in front of everything)


@dataclass(frozen=True)
class Actor:
    """An object: the photo it is cut from (crop box x1 y1 x2 y2), its size on screen, its path."""

    photo: str
    crop: tuple[int, int, int, int]
    size: tuple[int, int]                                # w, h on screen
    start: tuple[float, float]                           # top-left at its first frame
    velocity: tuple[float, float]                        # px per frame
    frames: tuple[int, int]                              # [first, last) frame on screen
    depth: int                                           # higher: nearer (drawn later)
    class_id: int = 0

    def box(self, frame: int) -> tuple[float, float, float, float]:
        t = frame - self.frames[0]
        x, y = self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t
        return (x, y, x + self.size[0], y + self.size[1])


ACTORS = (
    Actor("astronaut.png", (150, 30, 340, 250), (80, 92), (10, 150), (1.8, 0.0), (0, 300), 2),
    Actor("chelsea.png", (140, 20, 330, 200), (90, 85), (540, 175), (-1.8, 0.0), (0, 300), 1),   # crosses 1
    Actor("motorcycle_left.png", (60, 40, 700, 470), (120, 80), (60, 20), (1.6, 0.9), (0, 300), 3),
    Actor("coffee.png", (150, 60, 450, 360), (70, 70), (420, 420), (-0.3, -1.6), (40, 270), 4, 1),
    Actor("camera.png", (120, 20, 380, 340), (75, 90), (470, 40), (-1.0, 0.25), (20, 300), 0),
)


@dataclass
class Sequence:
    frames: list[np.ndarray]
    truth: list[dict[int, tuple[float, float, float, float]]]     # per frame: object id → visible box
    visible: list[dict[int, tuple[float, float, tuple[float, float, float, float]]]]   # id → (fraction, box)


def _background() -> np.ndarray:
    image = cv2.imread(str(SAMPLES / "rocket.jpg"))
    return cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def _patch(actor: Actor) -> np.ndarray:
    x1, y1, x2, y2 = actor.crop
    image = cv2.imread(str(SAMPLES / actor.photo))[y1:y2, x1:x2]
    return cv2.resize(image, actor.size, interpolation=cv2.INTER_AREA)


def make_sequence(render: bool = True) -> Sequence:
    """Every frame (empty list when not ``render``), the true boxes and what of each object shows."""
    background = _background()
    pillar = cv2.imread(str(SAMPLES / "coffee.png"))[:, 20:20 + PILLAR[1] - PILLAR[0]]
    pillar = cv2.resize(pillar, (PILLAR[1] - PILLAR[0], HEIGHT))
    patches = {k: _patch(a) for k, a in enumerate(ACTORS)}
    order = sorted(range(len(ACTORS)), key=lambda k: ACTORS[k].depth)
    seq = Sequence([], [], [])
    for f in range(FRAMES):
        owner = np.full((HEIGHT, WIDTH), -1, np.int32)       # which object each pixel shows
        frame = background.copy() if render else None
        present: list[int] = []
        for k in order:
            actor = ACTORS[k]
            if not actor.frames[0] <= f < actor.frames[1]:
                continue
            x1, y1, _, _ = actor.box(f)
            ix, iy = int(round(x1)), int(round(y1))
            w, h = actor.size
            sx1, sy1, sx2, sy2 = max(ix, 0), max(iy, 0), min(ix + w, WIDTH), min(iy + h, HEIGHT)
            if sx2 <= sx1 or sy2 <= sy1:
                continue
            present.append(k + 1)
            owner[sy1:sy2, sx1:sx2] = k
            if frame is not None:
                frame[sy1:sy2, sx1:sx2] = patches[k][sy1 - iy:sy2 - iy, sx1 - ix:sx2 - ix]
        owner[:, PILLAR[0]:PILLAR[1]] = -1
        if frame is not None:
            frame[:, PILLAR[0]:PILLAR[1]] = pillar
            seq.frames.append(frame)
        shown = {}
        for oid in present:
            ys, xs = np.nonzero(owner == oid - 1)
            area = ACTORS[oid - 1].size[0] * ACTORS[oid - 1].size[1]
            if len(xs):
                shown[oid] = (len(xs) / area, (float(xs.min()), float(ys.min()), float(xs.max() + 1),
                                               float(ys.max() + 1)))
        seq.truth.append({oid: box for oid, (fraction, box) in shown.items() if fraction >= MIN_VISIBLE})
        seq.visible.append(shown)
    return seq


def simulated_detections(seq: Sequence, seed: int = 7, miss: float = 0.05,
                         false_per_frame: float = 0.1) -> list[list[Detection]]:
    """Per frame, a detector's answer: each object's visible box jittered by ~3 % of its size, scored
    0.35-0.95 by how much of it shows (less than MIN_VISIBLE: not found), missed at random with
    probability ``miss``, plus false positives (low scores, random boxes)."""
    rng = np.random.default_rng(seed)
    out: list[list[Detection]] = []
    for shown in seq.visible:
        found: list[Detection] = []
        for oid, (fraction, (x1, y1, x2, y2)) in sorted(shown.items()):
            if fraction < MIN_VISIBLE or rng.random() < miss:
                continue
            w, h = x2 - x1, y2 - y1
            jitter = rng.normal(0, 0.03, 4) * (w, h, w, h)
            score = float(np.clip(0.35 + 0.6 * fraction + rng.normal(0, 0.05), 0.05, 0.99))
            class_id = ACTORS[oid - 1].class_id
            found.append(Detection(str(class_id), class_id, round(score, 3),
                                   tuple(round(float(v), 2) for v in np.add((x1, y1, x2, y2), jitter))))
        while rng.random() < false_per_frame:
            x, y = rng.uniform(0, WIDTH - 60), rng.uniform(0, HEIGHT - 60)
            size = rng.uniform(30, 60)
            found.append(Detection("0", 0, round(float(rng.uniform(0.2, 0.55)), 3),
                                   (round(x, 2), round(y, 2), round(x + size, 2), round(y + size, 2))))
        rng.shuffle(found)       # a detector's order says nothing about identity
        out.append(found)
    return out
