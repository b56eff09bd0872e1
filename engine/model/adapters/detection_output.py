"""SSD ``DetectionOutput`` models (OpenVINO IR of Caffe/TF SSDs): one ``[1, 1, N, 7]`` output.

Each row is ``[image_id, class_id, score, x_min, y_min, x_max, y_max]`` with the box normalised to
the model input; a row with ``image_id < 0`` ends the list. ``class_id`` indexes ``labels``
directly (the COCO list in data/coco91_labels.tsv starts with ``background`` at 0).
"""
from __future__ import annotations

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Detection
from engine.model.adapters import Adapter, read_params

DEFAULTS = {"min_score": 0.5}


class DetectionOutputAdapter(Adapter):
    """Rows of a DetectionOutput tensor above the score threshold, boxes in frame pixels."""

    name = "ssd_detection_output"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        self.threshold = self.min_score(read_params(model, DEFAULTS)["min_score"])

    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        if not any(shape and shape[-1] == 7 for shape in outputs.values()):
            listing = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
            raise ModelError(f"ssd_detection_output expects an output [1,1,N,7], model outputs: {listing}")

    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Detection]:
        rows = next(a for a in outputs.values() if a.shape and a.shape[-1] == 7).reshape(-1, 7)
        ends = np.flatnonzero(rows[:, 0] < 0)
        if ends.size:
            rows = rows[:ends[0]]
        rows = rows[rows[:, 2] >= self.threshold]
        boxes = geometry.boxes_to_frame(rows[:, 3:7]).tolist()
        return [Detection(self.label(int(class_id)), int(class_id), float(score), tuple(box))
                for class_id, score, box in zip(rows[:, 1], rows[:, 2], boxes)]
