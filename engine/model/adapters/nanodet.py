"""NanoDet (GFL head, anchor-free): per-stride class maps and distance distributions.

For each stride ``s`` (default 8, 16, 32) the model has two outputs over the ``ceil(H/s) × ceil(W/s)``
cells of the input, row-major: class scores ``[1, cells, C]`` (sigmoid already applied) and box
distributions ``[1, cells, 4 × (reg_max + 1)]``. Output names are not reliable (the 320 export's
names do not match their shapes), so outputs are told apart by shape: the last axis is ``C`` or
``4 × (reg_max + 1)``, and the cell count gives the stride. GFL decoding: for each of left, top,
right, bottom, the distance is the expectation of a softmax over ``reg_max + 1`` bins, times the
stride, from the cell centre ``(x·s + (s − 1)/2, y·s + (s − 1)/2)``. Candidates over ``min_score``
(each cell's best class) go through per-class NMS (IoU ``nms_iou``), at most ``max_detections``.
"""
from __future__ import annotations

import math

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Detection
from engine.model.adapters import Adapter, read_params
from engine.model.adapters.nms import class_nms

DEFAULTS = {"strides": [8, 16, 32], "num_classes": 80, "reg_max": 7, "min_score": 0.4, "nms_iou": 0.6,
            "max_detections": 100}


class NanoDetAdapter(Adapter):
    """Detections of a NanoDet GFL head, boxes in frame pixels."""

    name = "nanodet"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        params = read_params(model, DEFAULTS)
        self.strides = [int(s) for s in params["strides"]]
        self.classes, self.bins = params["num_classes"], params["reg_max"] + 1
        if self.classes == 4 * self.bins:
            raise ModelError(f"nanodet: num_classes {self.classes} equals 4 × (reg_max + 1): outputs "
                             f"cannot be told apart by shape")
        self.threshold = self.min_score(params["min_score"])
        self.iou, self.max_detections = params["nms_iou"], params["max_detections"]
        self._grids: dict[tuple[int, int, int], tuple[int, np.ndarray]] = {}   # (cells, w, h) → _grid()

    def _cells(self, shape: list[int]) -> int:
        """Cells of a ``[1, cells, K]`` (or ``[cells, K]``) output."""
        return int(np.prod(shape[:-1]))

    def _pairs(self, outputs: dict[str, list[int]]) -> dict[int, tuple[str, str]] | None:
        """``{cells: (class output, box output)}`` when every output pairs up by shape."""
        scores = {self._cells(s): n for n, s in outputs.items() if s and s[-1] == self.classes}
        boxes = {self._cells(s): n for n, s in outputs.items() if s and s[-1] == 4 * self.bins}
        if len(scores) + len(boxes) != len(outputs) or set(scores) != set(boxes) \
                or len(scores) != len(self.strides):
            return None
        return {cells: (scores[cells], boxes[cells]) for cells in scores}

    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        if self._pairs(outputs) is None:
            listing = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
            raise ModelError(f"nanodet expects, for each of {len(self.strides)} strides, a class map [1,N,"
                             f"{self.classes}] and a box map [1,N,{4 * self.bins}] with the same N "
                             f"(params num_classes, reg_max, strides); model outputs: {listing}")

    def _grid(self, cells: int, width: int, height: int) -> tuple[int, np.ndarray]:
        """(stride, ``[cells, 2]`` cell centres in input pixels) of a level with ``cells`` cells."""
        for stride in self.strides:
            cols, rows = math.ceil(width / stride), math.ceil(height / stride)
            if cols * rows == cells:
                ys, xs = np.divmod(np.arange(cells), cols)
                return stride, np.stack([xs, ys], axis=1).astype(np.float32) * stride + (stride - 1) / 2
        raise ModelError(f"nanodet: no stride in {self.strides} gives {cells} cells on a {width}x{height} input")

    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Detection]:
        pairs = self._pairs({name: list(a.shape) for name, a in outputs.items()})
        if pairs is None:
            self.check_outputs({name: list(a.shape) for name, a in outputs.items()})
        assert pairs is not None        # check_outputs raised otherwise
        all_boxes, all_scores, all_classes = [], [], []
        for cells, (score_name, box_name) in sorted(pairs.items(), reverse=True):
            key = (cells, geometry.input_w, geometry.input_h)
            if key not in self._grids:
                self._grids[key] = self._grid(cells, geometry.input_w, geometry.input_h)
            stride, centres = self._grids[key]
            scores = outputs[score_name].reshape(cells, self.classes)
            classes = scores.argmax(axis=1)
            best = scores[np.arange(cells), classes]
            keep = np.flatnonzero(best >= self.threshold)
            if not keep.size:
                continue
            logits = outputs[box_name].reshape(cells, 4, self.bins)[keep].astype(np.float32)
            weights = np.exp(logits - logits.max(axis=2, keepdims=True))
            distances = (weights / weights.sum(axis=2, keepdims=True)) @ np.arange(self.bins, dtype=np.float32)
            distances *= stride
            centre = centres[keep]
            all_boxes.append(np.concatenate([centre - distances[:, :2], centre + distances[:, 2:]], axis=1))
            all_scores.append(best[keep])
            all_classes.append(classes[keep])
        if not all_boxes:
            return []
        boxes, scores, classes = (np.concatenate(a) for a in (all_boxes, all_scores, all_classes))
        kept = class_nms(boxes, scores, classes, self.iou, self.max_detections)
        size = np.array([geometry.input_w, geometry.input_h] * 2, np.float32)
        frame_boxes = geometry.boxes_to_frame(boxes[kept] / size).tolist()
        return [Detection(self.label(int(c)), int(c), float(s), tuple(box))
                for c, s, box in zip(classes[kept], scores[kept], frame_boxes)]
