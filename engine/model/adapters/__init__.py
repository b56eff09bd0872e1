"""Output adapters: turn a model's raw output tensors for one frame into detections or classes.

Each adapter takes the resolved :class:`engine.config.ModelConfig`, checks at start-up that the
model's outputs fit it (:meth:`Adapter.check_outputs`, a :class:`ModelError` naming what is
wrong), and decodes one frame's outputs into plain dicts in the original frame's pixels:

- detection: ``{"label": str, "class_id": int, "score": float, "box": [x1, y1, x2, y2],
  "keypoints": [[x, y], ...]}`` (keypoints only where the model has them)
- classification: ``{"label": str, "class_id": int, "score": float}``, best first.
"""
from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry

ENGINE_PARAMS = frozenset({"layout", "input_size"})   # model params read by engine/model/prepare.py, not adapters


class Adapter(ABC):
    """Decodes one frame's output tensors. ``kind`` is ``detection`` or ``classification``."""

    kind: str = "detection"

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.labels = list(model.labels) if isinstance(model.labels, list) else []

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def min_score(self, default: float) -> float:
        """The score cut: ``model.score_threshold`` when set (>= 0), else ``default``."""
        return self.model.score_threshold if self.model.score_threshold >= 0 else default

    @abstractmethod
    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        """Raise :class:`ModelError` unless ``{output name: shape}`` fits this adapter."""

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[dict]:
        """One frame: ``outputs`` hold that frame's row of each tensor (batch axis kept, size 1)."""


def read_params(model: ModelConfig, defaults: dict[str, Any],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``model.params`` (less :data:`ENGINE_PARAMS`) over ``defaults``. Unknown keys, missing
    ``required`` ones and values of another kind than their default raise :class:`ModelError` (an
    int passes for a float; list items are checked against the default list's first item)."""
    where = f"model '{model.name}' params"
    params = {key: value for key, value in model.params.items() if key not in ENGINE_PARAMS}
    for key, value in params.items():
        if key not in defaults:
            near = difflib.get_close_matches(key, defaults, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(defaults)})"
            raise ModelError(f"{where}: unknown key '{key}'{hint}")
        default = defaults[key]
        if isinstance(default, list):
            ok = isinstance(value, list) and all(_same_kind(item, default[0]) for item in value)
        else:
            ok = _same_kind(value, default)
        if not ok:
            raise ModelError(f"{where}: '{key}' must be like {default!r}, not {value!r}")
    missing = [key for key in required if key not in params]
    if missing:
        raise ModelError(f"{where}: missing {', '.join(missing)}")
    return {**defaults, **params}


def _same_kind(value: Any, sample: Any) -> bool:
    if isinstance(sample, bool) or isinstance(value, bool):
        return isinstance(sample, bool) and isinstance(value, bool)
    if isinstance(sample, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(sample))


def create_adapter(model: ModelConfig) -> Adapter:
    """The adapter named by ``model.adapter``."""
    if model.adapter == "anchor_ssd":
        from engine.model.adapters.anchor_ssd import AnchorSSDAdapter as cls
    elif model.adapter == "ssd_detection_output":
        from engine.model.adapters.detection_output import DetectionOutputAdapter as cls
    elif model.adapter == "tf_od_api":
        from engine.model.adapters.tf_od_api import TFObjectDetectionAdapter as cls
    elif model.adapter == "classification":
        from engine.model.adapters.classification import ClassificationAdapter as cls
    elif model.adapter == "nanodet":
        from engine.model.adapters.nanodet import NanoDetAdapter as cls
    elif model.adapter == "yolo":
        from engine.model.adapters.yolo import YoloAdapter as cls
    else:
        raise ModelError(f"unknown adapter '{model.adapter}'")
    return cls(model)
