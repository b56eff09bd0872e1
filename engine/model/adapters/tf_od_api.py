"""TF2 Object Detection API models converted as they are (post-processing inside the graph).

Outputs: ``detection_boxes [1, N, 4]`` (ymin, xmin, ymax, xmax, normalised), ``detection_classes
[1, N]`` (float, 1-based COCO ids, which index data/coco91_labels.tsv directly), ``detection_scores
[1, N]`` and ``num_detections [1]`` (optional). They are found by name first: a name containing
the role (``detection_boxes``, ``detection_boxes:0`` …) but not ``raw`` (``raw_detection_boxes``
holds the boxes before NMS), or the TFLite export's names (``TFLite_Detection_PostProcess`` and
``:1``, ``:2``, ``:3`` for boxes, classes, scores, count). When names do not tell
(``StatefulPartitionedCall:1`` …), by shape: the one ``[1, N, 4]`` output is the boxes, a
one-element output the count, and of the two ``[1, N]`` outputs the scores are told from the
classes by their values in each frame (see :func:`_split_pair`).

``params.class_offset`` is added to the class ids: TFLite exports count classes without the
background (COCO id − 1), so their entry sets 1 to report COCO ids, which index the 91-line label map.
"""
from __future__ import annotations

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Detection
from engine.model.adapters import Adapter, read_params

DEFAULTS = {"min_score": 0.5, "class_offset": 0}
ROLES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
TFLITE_OP = "TFLite_Detection_PostProcess"
TFLITE_NAMES = dict(zip(ROLES, (TFLITE_OP, f"{TFLITE_OP}:1", f"{TFLITE_OP}:2", f"{TFLITE_OP}:3")))


def _by_name(outputs: dict[str, list[int]]) -> dict[str, str] | None:
    """``{role: output name}`` when every role but ``num_detections`` matches exactly one name."""
    if all(TFLITE_NAMES[role] in outputs for role in ROLES[:3]):
        return {role: name for role, name in TFLITE_NAMES.items() if name in outputs}
    found = {}
    for role in ROLES:
        names = [n for n in outputs if role in n.lower() and "raw" not in n.lower()]
        if len(names) == 1:
            found[role] = names[0]
        elif role != "num_detections":
            return None
    return found


def _by_shape(outputs: dict[str, list[int]]) -> tuple[str, list[str], str | None] | None:
    """``(boxes, [the two [1, N] outputs], count or None)`` when shapes single them out."""
    boxes = [n for n, s in outputs.items() if len(s) == 3 and s[-1] == 4]
    if len(boxes) != 1:
        return None
    count = outputs[boxes[0]][1]
    pair = [n for n, s in outputs.items() if len(s) == 2 and s[1] == count]
    counts = [n for n, s in outputs.items() if len(s) <= 2 and all(d == 1 for d in s[1:])]
    if len(pair) != 2 or len(counts) > 1 or len(outputs) != 3 + len(counts):
        return None
    return boxes[0], pair, counts[0] if counts else None


def _split_pair(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, classes)`` from the two ``[1, N]`` outputs. Scores lie in [0, 1]; real entries'
    1-based class ids are >= 1 >= their scores and padding is 0 in both, so the scores also have the
    smaller sum (equal sums only where the two agree on every detection)."""
    def key(values: np.ndarray) -> tuple[bool, float]:
        return not bool(np.all((values >= 0) & (values <= 1))), float(values.sum())
    return (first, second) if key(first) <= key(second) else (second, first)


class TFObjectDetectionAdapter(Adapter):
    """Detections from TF OD API outputs, boxes reordered to (x1, y1, x2, y2) in frame pixels."""

    name = "tf_od_api"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        params = read_params(model, DEFAULTS)
        self.threshold = self.min_score(params["min_score"])
        self.class_offset = params["class_offset"]
        self.names: dict[str, str] | None = None
        self.shapes: tuple[str, list[str], str | None] | None = None

    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        self._resolve(outputs)

    def _resolve(self, outputs: dict[str, list[int]]) -> None:
        self.names = _by_name(outputs)
        self.shapes = None if self.names else _by_shape(outputs)
        if self.names is None and self.shapes is None:
            listing = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
            raise ModelError("tf_od_api expects detection_boxes [1,N,4], detection_classes [1,N], "
                             f"detection_scores [1,N] and num_detections [1]; model outputs: {listing}")

    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Detection]:
        if self.names is None and self.shapes is None:
            self._resolve({name: list(a.shape) for name, a in outputs.items()})
        if self.names:
            boxes, classes, scores = (outputs[self.names[role]] for role in ROLES[:3])
            count_name = self.names.get("num_detections")
        else:
            assert self.shapes is not None      # _resolve set names or shapes, or raised
            boxes_name, pair, count_name = self.shapes
            scores, classes = _split_pair(*(outputs[name].reshape(-1) for name in pair))
            boxes = outputs[boxes_name]
        count = None if count_name is None else outputs[count_name]
        n = len(scores.reshape(-1)) if count is None else int(count.reshape(-1)[0])
        boxes, classes, scores = boxes.reshape(-1, 4)[:n], classes.reshape(-1)[:n], scores.reshape(-1)[:n]
        keep = scores >= self.threshold
        frame_boxes = geometry.boxes_to_frame(boxes[keep][:, [1, 0, 3, 2]]).tolist()
        ids = (np.rint(classes[keep]).astype(np.int64) + self.class_offset).tolist()
        return [Detection(self.label(class_id), class_id, float(score), tuple(box))
                for class_id, score, box in zip(ids, scores[keep], frame_boxes)]
