"""Classifiers: one ``[1, C]`` (or ``[1, C, 1, 1]``) output of scores, top-k classes per frame.

Scores that do not look like probabilities (a value outside [0, 1], or a sum off 1 by more than
``PROB_TOLERANCE``) are taken for logits and pass through a softmax. ``params.label_offset`` is
for models with a background class at index 0 and labels without it: ``class_id = index -
label_offset``; indices below the offset are never reported.
"""
from __future__ import annotations

import math

import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Classification
from engine.model.adapters import Adapter, read_params

DEFAULTS = {"label_offset": 0}
PROB_TOLERANCE = 0.01


def _classes(shape: list[int]) -> int:
    """C for a ``[1, C]`` or ``[1, C, 1, 1]`` shape, else 0."""
    return shape[1] if len(shape) in (2, 4) and all(d == 1 for d in shape[2:]) else 0


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


class ClassificationAdapter(Adapter):
    """The ``model.top_k`` best classes, best first."""

    name = "classification"
    kind = "classification"

    def __init__(self, model: ModelConfig) -> None:
        super().__init__(model)
        self.offset = read_params(model, DEFAULTS)["label_offset"]
        self.threshold = self.min_score(0.0)

    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        if len([shape for shape in outputs.values() if self._fits(list(shape))]) != 1:
            listing = ", ".join(f"{name} {list(shape)}" for name, shape in outputs.items())
            raise ModelError(f"classification expects one output [1,C] or [1,C,1,1] with C > label_offset "
                             f"({self.offset}); model outputs: {listing}")

    def _fits(self, shape: list[int]) -> bool:
        return _classes(shape) > self.offset

    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Classification]:
        scores = next(a for a in outputs.values() if self._fits(list(a.shape)))
        values = scores.reshape(-1).astype(np.float64)
        probabilities = values.min() >= 0 and values.max() <= 1 \
            and math.isclose(values.sum(), 1.0, abs_tol=PROB_TOLERANCE)
        if not probabilities:
            values = softmax(values)
        values = values[self.offset:]
        best = np.argsort(-values, kind="stable")[:max(self.model.top_k, 0)]
        return [Classification(self.label(int(i)), int(i), float(values[i]))
                for i in best if values[i] >= self.threshold]
