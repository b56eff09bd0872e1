"""What a model file is, from the file alone: its output adapter and input conventions.

``ovstream run --model FILE`` (and ``Pipeline(model=FILE)``) start from the file, not from the
default config's model. :func:`engine.config.resolve_model` first looks for a registry entry of the
same file (same path, or same sha256: a copy); for a file the registry does not know, and no
``--adapter``, it calls the *detector* it was handed, :func:`detect_model` here. The config layer
sits below this one (it must not import OpenVINO or the adapters), so the detector is passed down
as a hook by the commands above both (``engine/tools/run.py``, ``engine/api/pipeline.py``): the
layers stay as they are, and code that loads configs without a hook (tests, benches) gets one line
asking for ``--adapter`` instead of a model read.

:func:`detect` is the pure core (output names and shapes, the input's size, channels and element
type in; a :class:`Detected` or ``None`` out). A layout is taken only where it is unambiguous:

- TF Object Detection API post-processed outputs: ``detection_boxes``, ``detection_scores``,
  ``detection_classes`` (TF1 frozen graphs, TF2 SavedModels), or the TFLite export's
  ``TFLite_Detection_PostProcess`` (``:1``, ``:2``) → ``tf_od_api``, stretch, RGB; a uint8 input
  takes pixels as they are, a float one the OD API SSDs' ``[-1, 1]``; TFLite counts classes
  without the background (``class_offset = 1``);
- one ``[1, 1, N, 7]`` output (``DetectionOutput``) → ``ssd_detection_output``: stretch, BGR,
  pixels as they are (the Caffe / Open Model Zoo convention of those IRs);
- one ``[1, N, 5 + C]`` or ``[1, 4 + C, N]`` output whose N matches the input's grid at strides
  8, 16, 32: one candidate per cell, ``[1, N, 5 + C]`` → YOLOX (``yolox``: letterbox padded
  with 114, BGR, 0–255); three per cell, ``[1, N, 5 + C]`` → YOLOv5, ``[1, 4 + C, N]`` (one per
  cell) → YOLOv8/11 (``yolo``: letterbox, RGB, /255);
- one ``[1, C]`` or ``[1, C, 1, 1]`` output, C ≥ 2 → ``classification``; its mean/scale and
  resize are not in the file, so they stay the engine's defaults (say them in a config).

A 1-channel input is read as GRAY. Anything else is a :class:`ModelError`: one line with the
outputs seen (names and shapes), asking for ``--adapter``. Importing this module is light: OpenVINO
is imported when a file is read, so the command line can hand :func:`detect_model` down unused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import ADAPTERS, PreprocessConfig
from engine.core.errors import ModelError
from engine.core.geometry import RESIZE_MODES

if TYPE_CHECKING:
    from engine.model.runtime import ov

OD_API_ROLES = ("detection_boxes", "detection_scores", "detection_classes")
TFLITE_POSTPROCESS = "TFLite_Detection_PostProcess"
YOLO_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Output:
    """One model output: every name of its tensor (the first is the one shown) and its shape
    (dynamic dimensions as -1)."""

    names: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.names[0] if self.names else "?"


@dataclass(frozen=True)
class ImageInput:
    """The image input: spatial size (0 when dynamic), channels, and whether it takes uint8."""

    height: int = 0
    width: int = 0
    channels: int = 3
    uint8: bool = False


@dataclass(frozen=True)
class Detected:
    """An adapter and the input conventions that go with it, and why (for the user)."""

    adapter: str
    why: str
    preprocess: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def entry(self, image: ImageInput) -> dict[str, Any]:
        """A registry-like entry (``adapter``, ``preprocess``, ``params``, ``description``)."""
        pre = dict(self.preprocess)
        if image.channels == 1:
            pre.update(color="GRAY", mean=[float(pre.get("mean", [0.0])[0])],
                       scale=[float(pre.get("scale", [1.0])[0])])
        known = PreprocessConfig.model_fields
        return {"adapter": self.adapter, "description": f"detected: {self.why}",
                "preprocess": {key: value for key, value in pre.items() if key in known},
                "params": dict(self.params)}


def listing(outputs: list[Output]) -> str:
    """``name [d, d, …]`` for each output, comma-separated."""
    return ", ".join(f"{out.name} {list(out.shape)}" for out in outputs)


def _tf_od_api(outputs: list[Output], image: ImageInput) -> Detected | None:
    names = [name for out in outputs for name in out.names]
    tflite = all(any(n == f"{TFLITE_POSTPROCESS}{tail}" for n in names) for tail in ("", ":1", ":2"))
    named = all(any(role in n.lower() and "raw" not in n.lower() for n in names) for role in OD_API_ROLES)
    if not (tflite or named):
        return None
    unit = {"mean": [0.0] * 3, "scale": [1.0] * 3} if image.uint8 else {"mean": [127.5] * 3, "scale": [127.5] * 3}
    kind = f"TFLite {TFLITE_POSTPROCESS}" if tflite else "TF Object Detection API"
    return Detected("tf_od_api", f"{kind} outputs (detection_boxes, detection_scores, detection_classes)",
                    {"resize": "stretch", "color": "RGB", **unit}, {"class_offset": 1} if tflite else {})


def _detection_output(outputs: list[Output]) -> Detected | None:
    if len(outputs) != 1 or len(outputs[0].shape) != 4 or outputs[0].shape[3] != 7 or outputs[0].shape[:2] != (1, 1):
        return None
    return Detected("ssd_detection_output", f"one DetectionOutput {list(outputs[0].shape)} output",
                    {"resize": "stretch", "color": "BGR", "mean": [0.0] * 3, "scale": [1.0] * 3})


def grid_cells(height: int, width: int, strides: tuple[int, ...] = YOLO_STRIDES) -> int:
    """Cells of a detection head's grids over an input of ``height × width`` (0 for a dynamic size)."""
    if height <= 0 or width <= 0:
        return 0
    return sum(-(-height // s) * -(-width // s) for s in strides)


def _yolo(outputs: list[Output], image: ImageInput) -> Detected | None:
    if len(outputs) != 1 or len(outputs[0].shape) != 3 or outputs[0].shape[0] != 1:
        return None
    _, a, b = outputs[0].shape
    cells = grid_cells(image.height, image.width)
    if cells == 0 or min(a, b) < 5:
        return None
    shape = list(outputs[0].shape)
    ultralytics = {"resize": "letterbox", "color": "RGB", "mean": [0.0] * 3, "scale": [255.0] * 3}
    if a == cells and b > 5 and "yolox" in ADAPTERS:
        pre = {"resize": "letterbox_topleft" if "letterbox_topleft" in RESIZE_MODES else "letterbox",
               "pad": 114, "color": "BGR", "mean": [0.0] * 3, "scale": [1.0] * 3}
        return Detected("yolox", f"one YOLOX output {shape} (one candidate per grid cell, strides 8/16/32)", pre)
    if a == 3 * cells and b > 5:
        return Detected("yolo", f"one YOLOv5 output {shape} (three anchors per grid cell)", ultralytics,
                        {"version": "v5"})
    if b == cells and a > 4:
        return Detected("yolo", f"one YOLOv8/11 output {shape} (one candidate per grid cell)", ultralytics,
                        {"version": "v8"})
    return None


def _classifier(outputs: list[Output]) -> Detected | None:
    if len(outputs) != 1:
        return None
    shape = outputs[0].shape
    if not (len(shape) in (2, 4) and shape[0] == 1 and all(d == 1 for d in shape[2:]) and shape[1] >= 2):
        return None
    return Detected("classification", f"one [1,C] output {list(shape)}: a classifier (input conventions: the "
                                      f"engine's defaults)", {})


def detect(outputs: list[Output], image: ImageInput) -> Detected | None:
    """The adapter and conventions that ``outputs`` and ``image`` single out, or None."""
    return (_tf_od_api(outputs, image) or _detection_output(outputs) or _yolo(outputs, image)
            or _classifier(outputs))


def describe_model(model: ov.Model) -> tuple[list[Output], ImageInput]:
    """The outputs and image input of an OpenVINO model, as :func:`detect` takes them."""
    from engine.model.prepare import input_info
    from engine.model.runtime import ov
    outputs = []
    for i, port in enumerate(model.outputs):
        names = sorted(port.get_names(), key=lambda n: (len(n), n)) or [f"output{i}"]
        outputs.append(Output(tuple(names), tuple(d.get_length() if d.is_static else -1
                                                  for d in port.get_partial_shape())))
    try:
        info = input_info(model)
    except ModelError:               # no single image input, or a dynamic size
        return outputs, ImageInput()
    port = next(p for p in model.inputs if p.get_any_name() == info.name)
    return outputs, ImageInput(info.height, info.width, info.channels, port.get_element_type() == ov.Type.u8)


def detect_model(path: str | Path) -> dict[str, Any]:
    """A registry-like entry for the model file at ``path`` (read with the engine's reader), or a
    :class:`ModelError`: one line naming the outputs and asking for ``--adapter``."""
    from engine.model.prepare import read_model
    from engine.model.runtime import ov
    model = read_model(ov.Core(), str(path))
    outputs, image = describe_model(model)
    found = detect(outputs, image)
    if found is None:
        raise ModelError(f"{path}: cannot tell its adapter from its outputs ({listing(outputs)}): give --adapter "
                         f"(one of {', '.join(ADAPTERS)}), or register the model")
    return found.entry(image)
