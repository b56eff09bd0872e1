"""Ultralytics YOLO exports (ONNX / OpenVINO IR), one output of candidate boxes on a letterboxed input.

- YOLOv5 layout ``[1, N, 5 + C]``: rows ``cx, cy, w, h, objectness, C class scores``; score =
  objectness × class score.
- YOLOv8 / YOLO11 layout ``[1, 4 + C, N]``: columns ``cx, cy, w, h, C class scores`` (no objectness).

Boxes are in input pixels (the letterboxed frame). The adapter tells the two apart
by shape: the candidate axis N (thousands) is longer than the attribute axis (``4 + C`` or ``5 + C``),
so ``[1, a, b]`` with ``a < b`` is v8, else v5; ``params.version`` = ``v5`` / ``v8`` forces one
(``auto`` by default; YOLO11 is ``v8``). Each candidate keeps its
best class; those over ``min_score`` go through per-class NMS (``agnostic_nms`` for one NMS over all
classes), at most ``max_detections``. Scores must already be probabilities (Ultralytics exports
apply the sigmoid inside the graph).
"""
from __future__ import annotations

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Detection
from engine.model.adapters import Adapter, read_params
from engine.model.adapters.nms import class_nms

DEFAULTS = {"version": "auto", "min_score": 0.25, "nms_iou": 0.45, "max_detections": 300, "agnostic_nms": False}
VERSIONS = ("auto", "v5", "v8")


def layout_of(shape: list[int], version: str = "auto") -> str | None:
    """``v5`` or ``v8`` for a ``[1, a, b]`` output shape (None when it cannot be one)."""
    if len(shape) != 3 or shape[0] != 1 or min(shape[1:]) < 5:
        return None
    if version != "auto":
        return version
    return "v8" if shape[1] < shape[2] else "v5"


class YoloAdapter(Adapter):
    """Detections of a YOLOv5 or YOLOv8/11 head, boxes in frame pixels."""

    name = "yolo"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        params = read_params(model, DEFAULTS)
        if params["version"] not in VERSIONS:
            raise ModelError(f"model '{model.name}' params: version must be one of {', '.join(VERSIONS)}, "
                             f"not '{params['version']}'")
        self.version = params["version"]
        self.threshold = self.min_score(params["min_score"])
        self.iou, self.max_detections = params["nms_iou"], params["max_detections"]
        self.agnostic = params["agnostic_nms"]

    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        if len(outputs) != 1 or layout_of(list(next(iter(outputs.values()))), self.version) is None:
            listing = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
            raise ModelError(f"yolo expects one output [1,N,5+C] (YOLOv5) or [1,4+C,N] (YOLOv8/11); "
                             f"model outputs: {listing}")

    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Detection]:
        (raw,) = outputs.values()
        layout = layout_of(list(raw.shape), self.version)
        if layout is None:
            self.check_outputs({name: list(a.shape) for name, a in outputs.items()})
        rows = raw[0].T if layout == "v8" else raw[0]                 # [N, 4 + C] or [N, 5 + C]
        if layout == "v5":
            class_scores = rows[:, 5:] * rows[:, 4:5]
        else:
            class_scores = rows[:, 4:]
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), classes]
        keep = np.flatnonzero(scores >= self.threshold)
        if not keep.size:
            return []
        cx, cy, w, h = rows[keep, :4].astype(np.float32).T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        scores, classes = scores[keep], classes[keep]
        kept = class_nms(boxes, scores, classes, self.iou, self.max_detections, self.agnostic)
        size = np.array([geometry.input_w, geometry.input_h] * 2, np.float32)
        frame_boxes = geometry.boxes_to_frame(boxes[kept] / size).tolist()
        return [Detection(self.label(int(c)), int(c), float(s), tuple(box))
                for c, s, box in zip(classes[kept], scores[kept], frame_boxes)]
