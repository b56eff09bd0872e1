"""Reference runtimes for `ovstream eval --conformance`: the original model in its own framework.

The engine's answers are checked against the framework that defined the model: TFLite files run in
the LiteRT interpreter (PyPI ``ai-edge-litert``), ONNX files in onnxruntime, TF SavedModels in
TensorFlow. The reference sees exactly the pixels the engine feeds: each image is decoded by the
engine's own reader (:func:`engine.io.sources.load_image`, full size, as the run with
``reduced_decode = false``), placed in the input by :class:`engine.core.geometry.Geometry` (the
preprocessor's resize), then given the model's input conventions (colour order, mean/scale, layout,
element type) in NumPy, as the engine's PrePostProcessor does them inside OpenVINO. Its outputs are
decoded by the same adapter into the same :class:`~engine.core.results.FrameResult` s, so any difference
is the runtime's alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from engine.config import ModelConfig
from engine.core.errors import ConfigError, ModelError
from engine.core.geometry import Geometry
from engine.core.results import FrameResult
from engine.io.sources import load_image
from engine.model.adapters import create_adapter
from engine.model.prepare import quiet_stderr

RUNTIMES = {".tflite": "LiteRT (ai-edge-litert)", ".onnx": "onnxruntime", "saved_model": "TensorFlow"}


class Reference(Protocol):
    """A model in its own runtime: one input, named outputs."""

    runtime: str
    shape: list[int]            # the input's shape (batch 1; -1 where dynamic)
    dtype: np.dtype

    def __call__(self, tensor: np.ndarray) -> dict[str, np.ndarray]: ...


class TFLiteReference:
    """A ``.tflite`` file in the LiteRT interpreter (the TFLite reference kernels + XNNPACK)."""

    runtime = RUNTIMES[".tflite"]

    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ConfigError("TFLite conformance needs the package ai-edge-litert "
                              "(pip install -e '.[tools]')") from None
        with quiet_stderr():            # the interpreter's "Created TensorFlow Lite XNNPACK delegate" line
            self.interpreter = Interpreter(model_path=str(path))
            self.interpreter.allocate_tensors()
        (inp,) = self.interpreter.get_input_details()
        self.input_index, self.shape, self.dtype = inp["index"], [int(d) for d in inp["shape"]], np.dtype(inp["dtype"])
        self.outputs = [(d["name"], d["index"]) for d in self.interpreter.get_output_details()]

    def __call__(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(index).copy() for name, index in self.outputs}


class OnnxReference:
    """An ``.onnx`` file in onnxruntime (CPU execution provider)."""

    runtime = RUNTIMES[".onnx"]
    DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3         # errors only: not one warning per initializer of old exports
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        self.name = inp.name
        self.shape = [d if isinstance(d, int) else -1 for d in inp.shape]
        self.dtype = np.dtype(self.DTYPES.get(inp.type, np.float32))
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, {self.name: tensor})))


class SavedModelReference:
    """A TF SavedModel's ``serving_default`` signature in TensorFlow."""

    runtime = RUNTIMES["saved_model"]

    def __init__(self, path: Path) -> None:
        try:
            import tensorflow as tf
        except ImportError:
            raise ConfigError("SavedModel conformance needs TensorFlow (pip install -e '.[train]')") from None
        self.function = tf.saved_model.load(str(path)).signatures["serving_default"]
        (spec,) = self.function.structured_input_signature[1].values()
        self.shape = [d if d is not None else -1 for d in spec.shape.as_list()]
        self.dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self._tf = tf

    def __call__(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self.function(self._tf.constant(tensor)).items()}


def open_reference(path: Path) -> Reference:
    """The reference runtime for a model file or SavedModel folder."""
    if path.is_dir() or path.name == "saved_model.pb":
        folder = path if path.is_dir() else path.parent
        saved = folder if (folder / "saved_model.pb").is_file() else folder / "saved_model"
        if not (saved / "saved_model.pb").is_file():
            raise ConfigError(f"{path}: not a TF SavedModel folder")
        return SavedModelReference(saved)
    if path.suffix.lower() == ".tflite":
        return TFLiteReference(path)
    if path.suffix.lower() == ".onnx":
        return OnnxReference(path)
    raise ConfigError(f"{path}: no reference runtime for this format (conformance runs .tflite, .onnx and "
                      f"SavedModels; give the original with --conformance ORIGINAL)")


def model_input(pixels: np.ndarray, cfg: ModelConfig, reference: Reference) -> np.ndarray:
    """BGR uint8 pixels (the engine's input slot row) → the tensor the original model takes."""
    pre = cfg.preprocess
    image = pixels
    if pre.color == "RGB":
        image = image[..., ::-1]
    elif pre.color == "GRAY":
        image = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)[..., None]
    channels = image.shape[-1]
    mean = np.asarray(pre.mean[:channels], np.float32)
    scale = np.asarray(pre.scale[:channels], np.float32)
    if reference.dtype == np.uint8 and not mean.any() and np.all(scale == 1):
        tensor = np.ascontiguousarray(image, dtype=np.uint8)
    else:
        tensor = ((image.astype(np.float32) - mean) / scale).astype(reference.dtype)
    shape = reference.shape
    nchw = len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)
    if nchw:
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None])


def input_size(reference: Reference, cfg: ModelConfig) -> tuple[int, int]:
    """(width, height) of the original model's input (``params.input_size`` where it is dynamic)."""
    shape = reference.shape
    nchw = len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)
    h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    if (h <= 0 or w <= 0) and cfg.params.get("input_size"):
        h, w = (int(v) for v in cfg.params["input_size"])
    if h <= 0 or w <= 0:
        raise ModelError(f"the original model's input {shape} has a dynamic size: set params.input_size")
    return w, h


def reference_records(cfg: ModelConfig, reference: Reference, images: list[Path]) -> list[FrameResult]:
    """One result per image (``frame_id``: its position in ``images``), from ``reference`` and ``cfg``'s adapter."""
    adapter = create_adapter(cfg)
    width, height = input_size(reference, cfg)
    records: list[FrameResult] = []
    for frame_id, path in enumerate(images):
        frame, error, _ = load_image(path)
        if frame is None:
            records.append(FrameResult.failed("", frame_id, str(path), 0, "decode", error or "unreadable"))
            continue
        pre = cfg.preprocess
        geometry = Geometry.plan(frame.shape[1], frame.shape[0], width, height, pre.resize, pre.crop)
        pixels = np.zeros((height, width, 3), np.uint8)
        geometry.resize_into(frame, pixels, pre.interpolation, pre.pad)
        outputs = reference(model_input(pixels, cfg, reference))
        outputs = {name: value.astype(np.float32) if value.dtype.kind == "f" else value
                   for name, value in outputs.items()}
        records.append(FrameResult("", frame_id, str(path), 0, **adapter.answer(adapter.decode(outputs, geometry))))
    return records
