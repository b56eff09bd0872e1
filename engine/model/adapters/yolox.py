"""YOLOX (Megvii, anchor-free): one output of raw per-cell predictions over three strides.

The official ONNX export (``decode_in_inference`` off) has one output ``[1, N, 5 + C]`` whose rows
are the cells of each stride (default 8, 16, 32) in turn, row-major: ``N = Σ (H/s)·(W/s)`` (3549
for 416×416). A row holds ``x, y, log w, log h, objectness, C class scores`` (objectness and class
scores already sigmoided). Grid/stride decoding: the centre is ``(x + col, y + row) · s`` and the
size ``exp(log w, log h) · s``, in input pixels. Score = objectness × the cell's best class score;
candidates over ``min_score`` go through per-class NMS (IoU ``nms_iou``), at most ``max_detections``.

YOLOX is trained on BGR 0–255 pixels, letterboxed into the top-left corner with grey (114)
padding: its registry entry sets ``resize = "letterbox_topleft"``, ``pad = 114``, ``color = "BGR"``.
"""
from __future__ import annotations

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Detection
from engine.model.adapters import Adapter, read_params
from engine.model.adapters.nms import class_nms

DEFAULTS = {"strides": [8, 16, 32], "num_classes": 80, "min_score": 0.3, "nms_iou": 0.45, "max_detections": 100}


def grid(width: int, height: int, strides: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(``[N, 2]`` cell offsets (col, row), ``[N, 1]`` strides) of a ``width × height`` input, the
    strides in turn, each row-major: the order of YOLOX's output rows."""
    cells, scales = [], []
    for stride in strides:
        rows, cols = height // stride, width // stride
        ys, xs = np.divmod(np.arange(rows * cols), cols)
        cells.append(np.stack([xs, ys], axis=1))
        scales.append(np.full((rows * cols, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(scales).astype(np.float32)


class YoloxAdapter(Adapter):
    """Detections of a YOLOX head (raw grid outputs), boxes in frame pixels."""

    name = "yolox"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        params = read_params(model, DEFAULTS)
        self.strides = [int(s) for s in params["strides"]]
        self.classes = params["num_classes"]
        self.threshold = self.min_score(params["min_score"])
        self.iou, self.max_detections = params["nms_iou"], params["max_detections"]
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        shapes = list(outputs.values())
        if len(shapes) != 1 or len(shapes[0]) != 3 or shapes[0][0] != 1 or shapes[0][2] != 5 + self.classes:
            listing = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
            raise ModelError(f"yolox expects one output [1,N,{5 + self.classes}] (x, y, log w, log h, objectness, "
                             f"{self.classes} class scores per cell; params num_classes); model outputs: {listing}")

    def _grid(self, rows: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        key = (width, height)
        if key not in self._grids:
            self._grids[key] = grid(width, height, self.strides)
        cells, strides = self._grids[key]
        if len(cells) != rows:
            raise ModelError(f"yolox: {rows} output rows, but strides {self.strides} give {len(cells)} cells "
                             f"on a {width}x{height} input")
        return cells, strides

    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Detection]:
        (raw,) = outputs.values()
        if raw.ndim != 3 or raw.shape[2] != 5 + self.classes:
            self.check_outputs({name: list(a.shape) for name, a in outputs.items()})
        rows = raw[0]
        cells, strides = self._grid(len(rows), geometry.input_w, geometry.input_h)
        class_scores = rows[:, 5:]
        classes = class_scores.argmax(axis=1)
        scores = rows[:, 4] * class_scores[np.arange(len(rows)), classes]
        keep = np.flatnonzero(scores >= self.threshold)
        if not keep.size:
            return []
        found = rows[keep, :4].astype(np.float32)
        centre = (found[:, :2] + cells[keep]) * strides[keep]
        half = np.exp(np.minimum(found[:, 2:4], 20.0)) * strides[keep] / 2   # no overflow on wild outputs
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        scores, classes = scores[keep], classes[keep]
        kept = class_nms(boxes, scores, classes, self.iou, self.max_detections)
        size = np.array([geometry.input_w, geometry.input_h] * 2, np.float32)
        frame_boxes = geometry.boxes_to_frame(boxes[kept] / size).tolist()
        return [Detection(self.label(int(c)), int(c), float(s), tuple(box))
                for c, s, box in zip(classes[kept], scores[kept], frame_boxes)]
