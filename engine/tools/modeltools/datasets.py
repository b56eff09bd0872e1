"""Calibration and validation data for the model tools, fed to a model exactly as the engine feeds it.

Frames are uint8 BGR images, as the decoder reads them. :class:`InputPreparer` fits each frame
into the model's input size with :class:`engine.core.geometry.Geometry` (letterbox, stretch or crop, as the
preprocessor does), then applies the registry's conventions with the engine's own
PrePostProcessor recipe (:func:`engine.model.prepare.prepare_model`) compiled around a pass-through model:
the tensors it returns are the ones the raw model receives inside the engine.

MNIST (``data/mnist_5k.npz``: 500 digits per class, stored class by class) has one fixed split:
per class, the first 400 digits are for training and calibration, the last 100 are held out
(1000 digits, 100 per class) for every accuracy figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops

from engine.config import ModelConfig
from engine.core import paths
from engine.core.errors import ConfigError
from engine.core.geometry import Geometry
from engine.model.prepare import input_info, prepare_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MNIST_NPZ = paths.bundled("data/mnist_5k.npz")
TRAIN_PER_CLASS = 400


@dataclass(frozen=True)
class Sample:
    """One model input (batch of 1) with where it came from and, when known, its true class."""

    tensor: np.ndarray
    geometry: Geometry
    source: str
    label: int = -1


@dataclass(frozen=True)
class MnistSplit:
    """The fixed MNIST split: 4000 training digits and 1000 held-out digits, uint8 [N, 28, 28]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_mnist(path: Path = MNIST_NPZ) -> MnistSplit:
    """Split ``path`` per class: the first 400 digits of each class train, the rest are held out."""
    try:
        with np.load(path) as data:
            images, labels = data["images"], data["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: not an MNIST npz with 'images' and 'labels' ({exc})") from None
    train = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        train[np.flatnonzero(labels == digit)[:TRAIN_PER_CLASS]] = True
    return MnistSplit(images[train], labels[train], images[~train], labels[~train])


def image_files(folder: Path, limit: int = 0) -> list[Path]:
    """The images of ``folder`` in name order (the first ``limit`` when > 0)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files[:limit] if limit > 0 else files


class InputPreparer:
    """uint8 BGR frames → the raw model's input tensors, the engine's way."""

    def __init__(self, model: ov.Model, cfg: ModelConfig, core: ov.Core | None = None) -> None:
        info = input_info(model, cfg.params)
        port = next(p for p in model.inputs if p.get_any_name() == info.name)
        shape = [1, info.channels, info.height, info.width] if info.layout == "NCHW" \
            else [1, info.height, info.width, info.channels]
        param = ops.parameter(shape, port.get_element_type(), name=info.name)
        passthrough = ov.Model([ops.result(param)], [param], "preprocess")
        prepared, _ = prepare_model(passthrough, cfg, batch=1)
        self._compiled = (core or ov.Core()).compile_model(prepared, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._dtype = port.get_element_type().to_dtype()
        self.width, self.height, self.pre = info.width, info.height, cfg.preprocess

    def __call__(self, frame: np.ndarray, source: str, label: int = -1) -> Sample:
        geometry = Geometry.plan(frame.shape[1], frame.shape[0], self.width, self.height, self.pre.resize,
                                 self.pre.crop)
        pixels = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        geometry.resize_into(frame, pixels, self.pre.interpolation, self.pre.pad)
        tensor = self._compiled(pixels[None])[0].astype(self._dtype)
        return Sample(tensor, geometry, source, label)


def folder_samples(folder: Path, prepare: InputPreparer, limit: int = 0) -> list[Sample]:
    """Samples of the images of ``folder``; unreadable files are skipped (an empty result is an error)."""
    samples = []
    for path in image_files(folder, limit):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is not None:
            samples.append(prepare(frame, str(path)))
    if not samples:
        raise ConfigError(f"{folder}: none of its images could be read")
    return samples


def mnist_samples(images: np.ndarray, labels: np.ndarray, prepare: InputPreparer) -> list[Sample]:
    """Samples of grey digits, turned into the BGR frames the engine would decode from their PNGs."""
    return [prepare(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), f"mnist:{i}", int(label))
            for i, (image, label) in enumerate(zip(images, labels))]
