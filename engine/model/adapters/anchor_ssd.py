"""MediaPipe-style SSD detectors whose box decoding lives outside the graph (BlazeFace, pose, palm).

Anchors are generated as mediapipe's ``SsdAnchorsCalculator`` does, boxes decoded as its
``TensorsToDetectionsCalculator`` (``reverse_output_order``: x before y) and merged with its
``NonMaxSuppressionCalculator`` in ``WEIGHTED`` mode. The two outputs are told apart by shape,
never by name (names differ between tflite files): regressors ``[1, N, 4 + 2K]`` and
classificators ``[1, N, 1]``.
"""
from __future__ import annotations

import math

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Detection
from engine.model.adapters import Adapter, read_params

DEFAULTS = {
    "num_layers": 0,                        # 0: len(strides)
    "strides": [8],
    "min_scale": 0.1484375,
    "max_scale": 0.75,
    "anchor_offset_x": 0.5,
    "anchor_offset_y": 0.5,
    "aspect_ratios": [1.0],
    "interpolated_scale_aspect_ratio": 1.0,
    "fixed_anchor_size": True,
    "box_scale": 128.0,                     # the model's input size in pixels
    "num_keypoints": -1,                    # -1: whatever the regressors hold
    "min_score": 0.5,
    "nms_iou": 0.3,
}
REQUIRED = ("strides", "min_scale", "max_scale", "box_scale")
SCORE_CLIP = 100.0


def _layer_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1)


def generate_anchors(params: dict) -> np.ndarray:
    """``[N, 4]`` anchors (x_center, y_center, w, h), normalised, in mediapipe's order."""
    strides = [int(s) for s in params["strides"]]
    num_layers = params["num_layers"] or len(strides)
    if num_layers != len(strides):
        raise ModelError(f"anchor_ssd: num_layers is {num_layers} but {len(strides)} strides are given")
    lo, hi = params["min_scale"], params["max_scale"]
    size = params["box_scale"]
    parts = []
    layer = 0
    while layer < num_layers:
        scales: list[float] = []
        ratios: list[float] = []
        last = layer   # layers of the same stride share one feature map, their anchors interleaved
        while last < num_layers and strides[last] == strides[layer]:
            scale = _layer_scale(lo, hi, last, num_layers)
            for ratio in params["aspect_ratios"]:
                scales.append(scale)
                ratios.append(ratio)
            if params["interpolated_scale_aspect_ratio"] > 0:
                following = 1.0 if last == num_layers - 1 else _layer_scale(lo, hi, last + 1, num_layers)
                scales.append(math.sqrt(scale * following))
                ratios.append(params["interpolated_scale_aspect_ratio"])
            last += 1
        rows = cols = math.ceil(size / strides[layer])
        ys, xs = np.meshgrid((np.arange(rows) + params["anchor_offset_y"]) / rows,
                             (np.arange(cols) + params["anchor_offset_x"]) / cols, indexing="ij")
        grid = np.empty((rows, cols, len(scales), 4), dtype=np.float64)
        grid[..., 0] = xs[..., None]
        grid[..., 1] = ys[..., None]
        if params["fixed_anchor_size"]:
            grid[..., 2:] = 1.0
        else:
            root = np.sqrt(ratios)
            grid[..., 2] = np.asarray(scales) * root
            grid[..., 3] = np.asarray(scales) / root
        parts.append(grid.reshape(-1, 4))
        layer = last
    return np.concatenate(parts).astype(np.float32)


class AnchorSSDAdapter(Adapter):
    """Anchor decoding, sigmoid scores and weighted NMS for mediapipe SSD detectors."""

    name = "anchor_ssd"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        self.params = read_params(model, DEFAULTS, REQUIRED)
        self.anchors = generate_anchors(self.params)
        self.scale = float(self.params["box_scale"])
        self.threshold = self.min_score(self.params["min_score"])
        self.nms_iou = float(self.params["nms_iou"])

    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        listing = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
        regs = [s for s in outputs.values() if len(s) == 3 and s[-1] >= 4]
        clss = [s for s in outputs.values() if len(s) == 3 and s[-1] == 1]
        if len(outputs) != 2 or len(regs) != 1 or len(clss) != 1:
            raise ModelError(f"anchor_ssd expects regressors [1,N,4+2K] and classificators [1,N,1], "
                             f"model outputs: {listing}")
        (reg,), (cls,) = regs, clss
        anchors = len(self.anchors)
        for count in (reg[1], cls[1]):
            if count > 0 and count != anchors:
                raise ModelError(f"model has {count} anchors but params generate {anchors}")
        keypoints = self.params["num_keypoints"]
        if reg[2] > 0 and ((reg[2] - 4) % 2 or keypoints >= 0 and reg[2] != 4 + 2 * keypoints):
            raise ModelError(f"regressors hold {reg[2]} values per anchor, "
                             f"which does not fit 4 + 2 × num_keypoints ({keypoints})")

    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Detection]:
        reg, cls = sorted(outputs.values(), key=lambda a: a.shape[-1], reverse=True)
        logits = np.clip(cls.reshape(-1), -SCORE_CLIP, SCORE_CLIP)
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        keep = np.flatnonzero(scores >= self.threshold)
        if not keep.size:
            return []
        pairs = reg.reshape(len(scores), -1, 2)[keep] / self.scale   # (cx, cy), (w, h), keypoints
        anchors = self.anchors[keep]
        centre = pairs[:, 0] * anchors[:, 2:] + anchors[:, :2]
        half = pairs[:, 1] * anchors[:, 2:] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        keypoints = pairs[:, 2:] * anchors[:, None, 2:] + anchors[:, None, :2]
        return self._merge(boxes, keypoints, scores[keep], geometry)

    def _merge(self, boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
               geometry: Geometry) -> list[Detection]:
        """Weighted NMS: each cluster (IoU > nms_iou with its best box) becomes the score-weighted
        mean of its boxes and keypoints, with the best box's score."""
        order = np.argsort(-scores, kind="stable")
        boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
        areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        merged_boxes, merged_points, best = [], [], []
        left = np.arange(len(scores))
        while left.size:
            top = left[0]
            lo = np.maximum(boxes[left, :2], boxes[top, :2])
            hi = np.minimum(boxes[left, 2:], boxes[top, 2:])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            union = areas[left] + areas[top] - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            member = iou > self.nms_iou
            member[0] = True
            cluster = left[member]
            weights = scores[cluster] / scores[cluster].sum()
            merged_boxes.append(weights @ boxes[cluster])
            merged_points.append(np.tensordot(weights, keypoints[cluster], axes=1))
            best.append(scores[top])
            left = left[~member]
        frame_boxes = geometry.boxes_to_frame(np.asarray(merged_boxes)).tolist()
        frame_points = geometry.normalized_to_frame(np.asarray(merged_points)).tolist()
        label = self.label(0)
        if not keypoints.shape[1]:
            return [Detection(label, 0, float(score), tuple(box)) for score, box in zip(best, frame_boxes)]
        return [Detection(label, 0, float(score), tuple(box), tuple(map(tuple, points)))
                for score, box, points in zip(best, frame_boxes, frame_points)]
