"""Output adapters: turn a model's raw output tensors for one frame into detections or classes.

Each adapter takes the resolved :class:`engine.config.ModelConfig`, checks at start-up that the
model's outputs fit it (:meth:`Adapter.check_outputs`, a :class:`ModelError` naming what is
wrong), and decodes one frame's outputs into plain dicts in the original frame's pixels:

- detection: ``{"label": str, "class_id": int, "score": float, "box": [x1, y1, x2, y2],
  "keypoints": [[x, y], ...]}`` (keypoints only where the model has them)
- classification: ``{"label": str, "class_id": int, "score": float}``, best first.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from engine.config import ModelConfig
from engine.errors import ModelError
from engine.geometry import Geometry


class Adapter(ABC):
    """Decodes one frame's output tensors. ``kind`` is ``detection`` or ``classification``."""

    kind: str = "detection"

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.labels = list(model.labels) if isinstance(model.labels, list) else []

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    @abstractmethod
    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        """Raise :class:`ModelError` unless ``{output name: shape}`` fits this adapter."""

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[dict]:
        """One frame: ``outputs`` hold that frame's row of each tensor (batch axis kept, size 1)."""


def create_adapter(model: ModelConfig) -> Adapter:
    """The adapter named by ``model.adapter``."""
    if model.adapter == "anchor_ssd":
        from engine.adapters.anchor_ssd import AnchorSSDAdapter as cls
    elif model.adapter == "ssd_detection_output":
        from engine.adapters.detection_output import DetectionOutputAdapter as cls
    elif model.adapter == "tf_od_api":
        from engine.adapters.tf_od_api import TFObjectDetectionAdapter as cls
    elif model.adapter == "classification":
        from engine.adapters.classification import ClassificationAdapter as cls
    else:
        raise ModelError(f"unknown adapter '{model.adapter}'")
    return cls(model)
