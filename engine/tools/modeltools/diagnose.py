"""`ovstream eval --diagnose`: which usual input mistake explains an accuracy far below the model's.

A classifier at 1 % top-1 or a detector at a fraction of its AP is almost always fed or read the
wrong way, not broken. On a small subset of the labelled data, the model is scored as configured,
then with one convention changed at a time:

- colour order RGB ↔ BGR;
- value range: 0–255, 0–1, −1–1, ImageNet mean/std (in the model's colour order);
- layout NCHW ↔ NHWC (``params.layout``; where the input's shape allows the other reading);
- resize: stretch, letterbox, centre crop (the ones not configured);
- label offset ±1 (a background class counted or not: the answers' class ids shifted when scoring);
- detectors: boxes normalised vs pixels (the answers' boxes rescaled by the input size when scoring).

Preprocessing is the engine's own (:class:`~engine.tools.modeltools.datasets.InputPreparer`) and the
answers are decoded by the model's adapter, so a trial is what the engine would give with that change.
The change that raises the metric most, by at least :data:`MIN_GAIN` and :data:`MIN_RATIO` × the
configured figure, is the diagnosis; a second round tries the other changes on top of it (two mistakes
at once, e.g. BGR and an offset label list).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openvino as ov

from engine.config import ModelConfig
from engine.core.errors import ConfigError, OvstreamError
from engine.core.geometry import Geometry
from engine.core.results import FrameResult
from engine.model.adapters import create_adapter
from engine.model.prepare import input_info, read_model
from engine.tools.modeltools.datasets import InputPreparer, Sample
from engine.tools.modeltools.metrics import coco_map, topk_accuracy

MIN_GAIN = 0.02     # a change counts when it raises the metric by this much (absolute) ...
MIN_RATIO = 1.05    # ... and to at least this multiple of the configured figure
ROUNDS = 2          # mistakes looked for at once
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
RANGES = {   # value range name → (mean, scale) per channel in RGB order: input = (pixel - mean) / scale
    "0–255": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "0–1": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    "−1–1": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "ImageNet mean/std": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
}
RESIZES = ("stretch", "letterbox", "crop")


@dataclass(frozen=True)
class Change:
    """One convention changed: in the model's config (re-run) or in how its answers are read (re-scored)."""

    topic: str                                  # what kind of mistake: colour, range, layout, resize, labels, boxes
    name: str                                   # what it sets, as a user would write it
    preprocess: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    label_shift: int = 0                        # added to every answer's class id
    box_factor: float = 0.0                     # answers' boxes, in model-input units, multiplied by this × input size

    @property
    def reruns(self) -> bool:
        return bool(self.preprocess or self.params)


@dataclass
class Trial:
    """The metric with a set of changes (none: as configured), or why it could not run."""

    changes: tuple[Change, ...]
    metric: float | None
    error: str = ""

    @property
    def label(self) -> str:
        return " + ".join(c.name for c in self.changes) or "as configured"


@dataclass
class Diagnosis:
    metric: str                          # "top-1 accuracy" or "COCO AP50"
    images: int
    trials: list[Trial]
    found: Trial | None                  # the change(s) that restore accuracy; None: no usual mistake explains it

    @property
    def baseline(self) -> Trial:
        return self.trials[0]


def changes_for(cfg: ModelConfig, layout: str, detector: bool) -> list[Change]:
    """The single changes worth trying for ``cfg`` (whose model input has ``layout``)."""
    pre = cfg.preprocess
    found: list[Change] = []
    if pre.color in ("RGB", "BGR"):
        other = "BGR" if pre.color == "RGB" else "RGB"
        found.append(Change("colour", f'color = "{other}"', {"color": other}))
        for name, (mean, scale) in RANGES.items():
            if pre.color == "BGR":
                mean, scale = mean[::-1], scale[::-1]
            if not (np.allclose(_per_channel(pre.mean, 3), mean) and np.allclose(_per_channel(pre.scale, 3), scale)):
                found.append(Change("range", f"values {name} (mean {_fmt(mean)}, scale {_fmt(scale)})",
                                    {"mean": list(mean), "scale": list(scale)}))
    else:
        for name, (mean, scale) in RANGES.items():
            same = np.isclose(pre.mean[0], mean[0]) and np.isclose(pre.scale[0], scale[0])
            if name != "ImageNet mean/std" and not same:
                found.append(Change("range", f"values {name} (mean {mean[0]:g}, scale {scale[0]:g})",
                                    {"mean": [mean[0]], "scale": [scale[0]]}))
    flipped = "NHWC" if layout == "NCHW" else "NCHW"
    found.append(Change("layout", f'layout = "{flipped}"', params={"layout": flipped}))
    current = "letterbox" if pre.resize == "letterbox_topleft" else pre.resize
    found += [Change("resize", f'resize = "{mode}"', {"resize": mode}) for mode in RESIZES if mode != current]
    found += [Change("labels", f"class ids {shift:+d} (label offset, background class)", label_shift=shift)
              for shift in (1, -1)]
    if detector:
        found += [Change("boxes", "boxes normalised, read as pixels", box_factor=1.0),
                  Change("boxes", "boxes in pixels, read as normalised", box_factor=-1.0)]
    return found


def _per_channel(values: list[float], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def shifted(record: FrameResult, shift: int) -> FrameResult:
    """``record`` with every class id moved by ``shift`` (a label list one off from the model's)."""
    if record.classes is not None:
        return replace(record, classes=tuple(replace(c, class_id=c.class_id + shift) for c in record.classes))
    if record.detections is not None:
        return replace(record, detections=tuple(replace(d, class_id=d.class_id + shift) for d in record.detections))
    return record


def rescaled(record: FrameResult, geometry: Geometry, factor: float) -> FrameResult:
    """``record``'s boxes read again in the other unit: ``factor`` 1 multiplies the model-input
    coordinates by the input size (normalised boxes that were read as pixels), −1 divides by it."""
    if not record.detections:
        return record
    boxes = np.array([d.box for d in record.detections], dtype=np.float64).reshape(-1, 2, 2)
    scale = np.array([geometry.sx, geometry.sy])
    pad = np.array([geometry.pad_x, geometry.pad_y])
    size = np.array([geometry.input_w, geometry.input_h], dtype=np.float64)
    model_xy = boxes * scale + pad
    model_xy = model_xy * size if factor > 0 else model_xy / size
    frame_xy = (model_xy - pad) / scale
    frame_xy[..., 0] = frame_xy[..., 0].clip(0, geometry.frame_w)
    frame_xy[..., 1] = frame_xy[..., 1].clip(0, geometry.frame_h)
    corners = frame_xy.reshape(-1, 4).tolist()
    return replace(record, detections=tuple(replace(d, box=(x1, y1, x2, y2))
                                            for d, (x1, y1, x2, y2) in zip(record.detections, corners)))


class Diagnoser:
    """Scores ``cfg``'s model on ``images`` with sets of changes; ``truth`` (classifier: path → class
    index) or ``annotations`` (detector: COCO instances) say what is right."""

    def __init__(self, cfg: ModelConfig, images: list[Path], *, truth: Mapping[str, int] | None = None,
                 annotations: Mapping | None = None, categories: str = "id",
                 score_threshold: float = 0.01) -> None:
        if (truth is None) == (annotations is None):
            raise ConfigError("--diagnose needs ground truth: a classifier's labels or a detector's --annotations")
        self.cfg = cfg.model_copy(update={"score_threshold": score_threshold}) if annotations is not None else cfg
        self.truth, self.annotations, self.categories = truth, annotations, categories
        self.core = ov.Core()
        self.model = read_model(self.core, cfg.path)
        self.compiled = self.core.compile_model(self.model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.frames = []
        for path in images:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                self.frames.append((str(path), frame))
        if not self.frames:
            raise ConfigError(f"--diagnose: none of the {len(images)} images could be read")
        self.layout = input_info(self.model, cfg.params).layout
        self._cache: dict[tuple[str, ...], tuple[list[FrameResult], list[Geometry]]] = {}

    @property
    def detector(self) -> bool:
        return self.annotations is not None

    @property
    def metric_name(self) -> str:
        return "COCO AP50" if self.detector else "top-1 accuracy"

    def configured(self, changes: tuple[Change, ...]) -> ModelConfig:
        """The model's config with ``changes``' settings applied in order."""
        cfg = self.cfg
        for change in changes:
            if change.reruns:
                cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update=change.preprocess),
                                             "params": {**cfg.params, **change.params}})
        return cfg

    def layout_with(self, changes: tuple[Change, ...]) -> str:
        return next((str(c.params["layout"]) for c in reversed(changes) if "layout" in c.params), self.layout)

    def trial(self, changes: tuple[Change, ...]) -> Trial:
        cfg = self.configured(changes)
        key = tuple(c.name for c in changes if c.reruns)
        try:
            if key not in self._cache:       # label and box changes re-read the same answers
                self._cache[key] = self._answers(cfg)
            records, geometries = self._cache[key]
        except (OvstreamError, RuntimeError, ValueError, IndexError) as exc:
            return Trial(changes, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        for change in changes:
            if change.label_shift:
                records = [shifted(r, change.label_shift) for r in records]
            if change.box_factor:
                records = [rescaled(r, g, change.box_factor) for r, g in zip(records, geometries)]
        return Trial(changes, self._score(records))

    def _answers(self, cfg: ModelConfig) -> tuple[list[FrameResult], list[Geometry]]:
        from engine.tools.modeltools.quantize import infer_all

        prepare = InputPreparer(self.model, cfg, self.core)
        samples: list[Sample] = [prepare(frame, path) for path, frame in self.frames]
        adapter = create_adapter(cfg)
        outputs = infer_all(self.compiled, samples)
        records = [FrameResult("", n, s.source, 0, **adapter.answer(adapter.decode(out, s.geometry)))
                   for n, (s, out) in enumerate(zip(samples, outputs))]
        return records, [s.geometry for s in samples]

    def _score(self, records: list[FrameResult]) -> float:
        if self.annotations is not None:
            return float(coco_map(self.annotations, records, categories=self.categories)["map50"] or 0.0)
        assert self.truth is not None
        truth = {path: label for path, label in self.truth.items() if path in {p for p, _ in self.frames}}
        return float(topk_accuracy(records, truth, k=(1,))["top1"] or 0.0)


def better(trial: Trial, than: Trial) -> bool:
    """``trial`` restores accuracy over ``than``: higher by :data:`MIN_GAIN` and :data:`MIN_RATIO` ×."""
    if trial.metric is None or than.metric is None:
        return False
    return trial.metric >= than.metric + MIN_GAIN and trial.metric >= than.metric * MIN_RATIO


def diagnose(diagnoser: Diagnoser, progress: Callable[[str], None] = lambda _: None) -> Diagnosis:
    """Try every single change, then (up to :data:`ROUNDS`) the others on top of the best one
    (worked out again on the config it makes: a range's channel order follows a colour flip)."""
    progress("as configured")
    trials = [diagnoser.trial(())]
    found: Trial | None = None
    base = trials[0]
    for _ in range(ROUNDS):
        applied = found.changes if found else ()
        topics = {c.topic for c in applied}
        round_trials = []
        for change in changes_for(diagnoser.configured(applied), diagnoser.layout_with(applied), diagnoser.detector):
            if change.topic in topics:
                continue
            progress(" + ".join(c.name for c in (*applied, change)))
            round_trials.append(diagnoser.trial((*applied, change)))
        trials += round_trials
        best = max((t for t in round_trials if t.metric is not None), key=lambda t: t.metric or 0.0, default=None)
        if best is None or not better(best, base):
            break
        found = base = best
    return Diagnosis(diagnoser.metric_name, len(diagnoser.frames), trials, found)
