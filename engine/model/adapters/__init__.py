"""Output adapters: turn a model's raw output tensors for one frame into detections or classes.

Each adapter takes the resolved :class:`engine.config.ModelConfig`, checks at start-up that the
model's outputs fit it (:meth:`Adapter.check_outputs`, a :class:`ModelError` naming what is
wrong), and decodes one frame's outputs into the result types of :mod:`engine.core.results`, in
the original frame's pixels: :class:`~engine.core.results.Detection` boxes (with keypoints where
the model has them), or :class:`~engine.core.results.Classification` classes, best first. The
postprocessor puts them into the frame's :class:`~engine.core.results.FrameResult` as they are.

Adapter names are defined once, in :data:`engine.config.ADAPTERS`: the config layer validates
``model.adapter`` (registry entries, ``--adapter`` choices) without importing this package, which
sits above it. Each adapter class declares its ``name`` and registers itself under it when its
module is imported; a name that is not in ``ADAPTERS``, or taken by another class, is a
``TypeError`` at import. :func:`create_adapter` imports the modules of this package (finding the
adapters by subclass, as plugins) and looks the class up by name, so adding an adapter is a module
here plus its name in ``ADAPTERS`` (tests check that every listed name has its class).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from engine.config import ADAPTERS, ModelConfig
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.core.results import Classification, Detection

ENGINE_PARAMS = frozenset({"layout", "input_size"})   # model params read by engine/model/prepare.py, not adapters


_BY_NAME: dict[str, type[Adapter]] = {}      # name → class: filled as adapter modules are imported


class Adapter(ABC):
    """Decodes one frame's output tensors. ``kind`` is ``detection`` or ``classification``;
    ``name`` is the one of :data:`engine.config.ADAPTERS` that ``model.adapter`` selects it by."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "detection"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register a class that declares its own ``name`` (a subclass that does not is not registered)."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        if cls.name not in ADAPTERS:
            raise TypeError(f"adapter {cls.__qualname__}: name '{cls.name}' is not one of engine.config.ADAPTERS "
                            f"({', '.join(ADAPTERS)})")
        known = _BY_NAME.get(cls.name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"adapter name '{cls.name}' is declared by both {known.__module__}.{known.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}")
        _BY_NAME[cls.name] = cls

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.labels = list(model.labels) if isinstance(model.labels, list) else []

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def min_score(self, default: float) -> float:
        """The score cut: ``model.score_threshold`` when set (>= 0), else ``default``."""
        return self.model.score_threshold if self.model.score_threshold >= 0 else default

    def answer(self, found: Sequence[Detection] | Sequence[Classification]) -> dict[str, Any]:
        """What :meth:`decode` found, as the :class:`~engine.core.results.FrameResult` field it fills:
        ``{"classes": ...}`` for a classifier (even when empty), ``{"detections": ...}`` for a detector."""
        return {"classes" if self.kind == "classification" else "detections": tuple(found)}

    @abstractmethod
    def check_outputs(self, outputs: dict[str, list[int]]) -> None:
        """Raise :class:`ModelError` unless ``{output name: shape}`` fits this adapter."""

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], geometry: Geometry) -> list[Detection] | list[Classification]:
        """One frame: ``outputs`` hold that frame's row of each tensor (batch axis kept, size 1).
        Detectors return :class:`Detection` s, classifiers :class:`Classification` s (best first)."""


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


def adapter_classes() -> dict[str, type[Adapter]]:
    """Every adapter class by name: the modules of this package imported (once), each class
    registered by its ``name``."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(_BY_NAME)


def create_adapter(model: ModelConfig) -> Adapter:
    """The adapter named by ``model.adapter``."""
    cls = _BY_NAME.get(model.adapter) or adapter_classes().get(model.adapter)
    if cls is None:
        raise ModelError(f"unknown adapter '{model.adapter}'")
    return cls(model)
