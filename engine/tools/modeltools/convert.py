"""`ovstream convert`: a TF / ONNX / TFLite / PaddlePaddle model → OpenVINO IR (.xml + .bin).

By default the IR is the raw model, and its input conventions (colour order, mean/scale, letterbox
or stretch) go into the registry: the engine folds them in with PrePostProcessor when it loads the
model, so one IR serves every input pipeline and INT8 calibration sees exactly the tensors the
model sees at run time. ``--embed-preprocess`` folds the same PrePostProcessor steps into the IR
instead (its input becomes uint8 NHWC BGR pixels) and registers identity conventions (BGR, mean 0,
scale 1), so the engine's own PrePostProcessor step has nothing left to do.

TFLite files are read with the engine's frontend conversion extensions (:mod:`engine.model.tflite_ops`), so
TF OD API exports ending in ``TFLite_Detection_PostProcess`` convert with their post-processing.

TF2 Object Detection API exports (``saved_model/saved_model.pb`` beside ``pipeline.config``) are
recognised: the input becomes uint8 [1, H, W, 3] with H×W from the pipeline's fixed_shape_resizer,
and the adapter, resize mode and labels are set for them.

TF1 Object Detection API frozen graphs (``frozen_inference_graph.pb``: ``image_tensor`` in,
``detection_boxes`` … out, with the Preprocessor, the anchor decode and the Postprocessor's NMS loop
inside) convert as they are; their input ``[?, ?, ?, 3]`` is fixed to ``[1, H, W, 3]`` with H×W the
size the graph's own Preprocessor resizes to (read from the converted graph), so the engine resizes
frames once, to that size (bilinear, as the graph would: ``interpolation = linear``), and the
graph's resize does nothing more.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openvino as ov
from openvino.frontend import FrontEndManager
from openvino.tools.ovc import convert_model  # not openvino.convert_model: see engine/model/runtime.py
from rich.console import Console, RenderableType
from rich.progress import Progress, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from engine.config import ADAPTERS, ModelConfig, PreprocessConfig, load_registry
from engine.core import paths
from engine.core.errors import ConfigError, ModelError
from engine.core.geometry import RESIZE_MODES
from engine.model.prepare import input_info, prepare_model
from engine.model.tflite_ops import EXTENSIONS, OP_TYPE
from engine.tools.modeltools.registry import file_value, labels_value, register_model

FRAMEWORKS = {".onnx": "onnx", ".tflite": "tflite", ".pdmodel": "paddle", ".pb": "tf", ".xml": "ir"}
FRAMEWORK_NAMES = {"onnx": "ONNX", "tflite": "TFLite", "paddle": "PaddlePaddle", "tf": "TensorFlow",
                   "ir": "OpenVINO IR"}
COCO_LABELS = "data/coco91_labels.tsv"       # bundled
FROZEN_OD_API_NODES = (b"image_tensor", b"detection_boxes", b"detection_scores", b"detection_classes")


@dataclass(frozen=True)
class Source:
    """A model to convert, as found on disk."""

    path: Path                        # what the converter reads (file, or SavedModel folder)
    framework: str                    # onnx | tflite | paddle | tf | ir
    od_api_shape: list[int] | None = None   # TF2 OD API export: uint8 [1, H, W, 3] from pipeline.config
    od_api_classes: int = 0
    tflite_postprocess: bool = False        # a TFLite TF OD API export (ends in TFLite_Detection_PostProcess)
    frozen_od_api: bool = False             # a TF1 OD API frozen graph (image_tensor → detection_boxes …)

    @property
    def od_api(self) -> bool:
        return self.od_api_shape is not None or self.od_api_classes > 0 or self.tflite_postprocess \
            or self.frozen_od_api


# ---- reading and converting ----------------------------------------------------------------------

def inspect_source(path: Path) -> Source:
    """Find the format of ``path``; a missing, unknown or unreadable model is a :class:`ModelError`."""
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    if path.is_file() and path.name == "saved_model.pb":
        path = path.parent
    if path.is_dir():
        saved = path if (path / "saved_model.pb").is_file() else path / "saved_model"
        if not (saved / "saved_model.pb").is_file():
            raise ModelError(f"{path}: a folder must be a TF SavedModel (holding saved_model.pb, "
                             f"or saved_model/saved_model.pb)")
        return _od_api_source(saved) or Source(saved, "tf")
    framework = FRAMEWORKS.get(path.suffix.lower())
    if framework is None:
        raise ModelError(f"{path}: unknown model format '{path.suffix}' "
                         f"(use a SavedModel folder, {', '.join(FRAMEWORKS)})")
    postprocess = frozen = False
    if framework in ("tflite", "tf"):
        with open(path, "rb") as fh:
            data = fh.read()
        if framework == "tflite" and data[4:8] != b"TFL3":
            raise ModelError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
        postprocess = framework == "tflite" and OP_TYPE.encode() in data   # custom op codes are stored by name
        frozen = framework == "tf" and all(name in data for name in FROZEN_OD_API_NODES)   # GraphDef node names
    if framework != "ir" and not FrontEndManager().load_by_framework(framework).supported(str(path)):
        raise ModelError(f"{path}: not a readable {FRAMEWORK_NAMES[framework]} model (corrupt or truncated?)")
    return Source(path, framework, tflite_postprocess=postprocess, frozen_od_api=frozen)


def _od_api_source(saved: Path) -> Source | None:
    config = next((p for p in (saved / "pipeline.config", saved.parent / "pipeline.config") if p.is_file()), None)
    if config is None:
        return None
    text = config.read_text(encoding="utf-8", errors="replace")
    fixed = re.search(r"fixed_shape_resizer\s*\{\s*height:\s*(\d+)\s*width:\s*(\d+)", text)
    classes = re.search(r"num_classes:\s*(\d+)", text)
    shape = [1, int(fixed.group(1)), int(fixed.group(2)), 3] if fixed else None
    return Source(saved, "tf", shape, int(classes.group(1)) if classes else 0)


def read_model(source: Source, input_shape: list[int] | None = None) -> ov.Model:
    """Convert ``source`` to an in-memory :class:`ov.Model` (``input_shape`` fixes a single input)."""
    shape = input_shape or source.od_api_shape
    try:
        if source.framework == "ir":
            model = ov.Core().read_model(source.path)
            if shape:
                model.reshape(shape)
        else:
            options = {"input": ov.PartialShape(shape)} if shape else {}
            if source.framework == "tflite":      # custom ops the frontend cannot translate alone
                options["extension"] = list(EXTENSIONS)
            model = convert_model(source.path, **options)
            if source.frozen_od_api and not shape:
                fixed = preprocessed_size(model)
                if fixed is not None:
                    model.reshape([1, *fixed, 3])
    except Exception as exc:  # the converters raise many types; all mean "this model does not convert"
        raise ModelError(f"{source.path}: cannot convert: {_one_line(exc)}") from None
    if not model.inputs or not model.outputs:
        raise ModelError(f"{source.path}: the converted model has no inputs or no outputs")
    return model


def preprocessed_size(model: ov.Model) -> tuple[int, int] | None:
    """``(H, W)`` that a TF1 OD API graph's Preprocessor resizes images to: the static spatial size
    of the image batch its ``Preprocessor/map`` loop puts out (None when it has none, or it is dynamic)."""
    for op in model.get_ordered_ops():
        for port in op.outputs():
            shape = port.get_partial_shape()
            if not any(name.startswith("Preprocessor/") for name in port.get_names()) or shape.rank.is_dynamic:
                continue
            dims = list(shape)
            if len(dims) == 4 and dims[3].is_static and dims[3].get_length() == 3 \
                    and dims[1].is_static and dims[2].is_static:
                return dims[1].get_length(), dims[2].get_length()
    return None


def embed_preprocess(model: ov.Model, cfg: ModelConfig) -> ov.Model:
    """Fold ``cfg.preprocess`` into ``model`` with the engine's own PrePostProcessor recipe
    (:func:`engine.model.prepare.prepare_model`, batch 1): the result takes uint8 NHWC BGR pixels."""
    info = input_info(model, cfg.params)
    want = 1 if cfg.preprocess.color == "GRAY" else 3
    if info.channels != want:
        raise ConfigError(f"color {cfg.preprocess.color} needs a {want}-channel model input; "
                          f"this one has {info.channels}")
    return prepare_model(model, cfg, batch=1)[0]


def per_channel(values: list[float], channels: int, what: str) -> list[float]:
    """One value per channel: a single value (or identical values) repeat to fit; others must match."""
    if len(set(values)) == 1:
        return [float(values[0])] * channels
    if len(values) != channels:
        raise ConfigError(f"{what} has {len(values)} values; the model input has {channels} channels")
    return [float(v) for v in values]


def save_ir(model: ov.Model, xml: Path, precision: str = "FP32") -> Path:
    """Write ``xml`` and its .bin; FP16 compresses the weights (``compress_to_fp16``)."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(model, str(xml), compress_to_fp16=precision == "FP16")
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"cannot write {xml}: {_one_line(exc)}") from None
    return xml


def _one_line(exc: BaseException) -> str:
    """The telling line of a converter's multi-line message (not its 'Check ... failed at' noise)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Check '", "FrontEnd API failed", "Exception from"))]
    return (useful or lines or [type(exc).__name__])[-1][:300]


@contextmanager
def step(progress: Progress | None, label: str) -> Iterator[None]:
    """One line of progress: a spinner while the block runs, a tick and its time when done."""
    if progress is None:
        yield
        return
    task = progress.add_task(label, total=1, failed=False)
    try:
        yield
    except BaseException:
        progress.update(task, completed=1, failed=True)
        raise
    progress.update(task, completed=1)


class _StepColumn(SpinnerColumn):
    """A spinner while a step runs, then a green tick, or a red cross for the step that failed."""

    def render(self, task: Task) -> RenderableType:
        return Text("✗", style="red") if task.fields.get("failed") else super().render(task)


def new_progress(console: Console | None = None) -> Progress:
    """The step display shared by the model tools."""
    return Progress(_StepColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                    TimeElapsedColumn(), console=console)


# ---- the command -----------------------------------------------------------------------------------

@dataclass
class ConvertResult:
    """What a conversion produced, and the registry entry that describes it."""

    xml: Path
    model: ov.Model
    entry: dict


def convert(src: Path, name: str, output: Path | None = None, *, input_shape: list[int] | None = None,
            precision: str = "FP32", embed: bool = False, adapter: str = "", labels: list[str] | str = "",
            pre: dict | None = None, description: str = "", progress: Progress | None = None,
            registry: Path | None = None) -> ConvertResult:
    """Convert ``src`` to ``output/name.xml`` (default ``OVSTREAM_HOME/models/NAME``) and make its
    entry for ``registry`` (default: the user's); ``pre`` holds the preprocess keys given by the
    user (the rest come from the existing registry entry, the model format, or the defaults)."""
    with step(progress, f"read {src}"):
        source = inspect_source(src)
    with step(progress, f"convert ({FRAMEWORK_NAMES[source.framework]}{', TF OD API' if source.od_api else ''})"):
        model = read_model(source, input_shape)
    existing = load_registry(registry).get(name, {})
    conventions = _conventions(source, model, existing.get("preprocess", {}), pre or {})
    if embed:
        with step(progress, f"embed preprocessing (uint8 BGR → {conventions.color}, mean/scale)"):
            model = embed_preprocess(model, ModelConfig(name=name, path=str(src), preprocess=conventions,
                                                        params=existing.get("params", {})))
        conventions = PreprocessConfig(resize=conventions.resize, color="BGR", mean=[0.0] * 3, scale=[1.0] * 3)
    xml = (output or paths.home() / "models" / name) / f"{name}.xml"
    with step(progress, f"save {precision} IR → {xml}"):
        save_ir(model, xml, precision)
    entry = {
        **existing,
        "description": description or existing.get("description") or f"{src.name} converted to {precision} IR",
        "file": file_value(xml, registry or paths.user_registry()),
        "adapter": adapter or existing.get("adapter") or ("tf_od_api" if source.od_api else ""),
        "labels": labels or existing.get("labels") or _default_labels(source),
        "preprocess": preprocess_entry(conventions),
    }
    if source.tflite_postprocess and "params" not in existing:
        entry["params"] = {"class_offset": 1}   # TFLite counts classes without the background
    return ConvertResult(xml, model, entry)


def preprocess_entry(pre: PreprocessConfig) -> dict:
    """The registry's ``preprocess`` table: the keys only where they matter (``crop`` for ``resize =
    crop``, a padding value other than 0, an interpolation other than the default)."""
    entry = pre.to_dict()
    if pre.resize != "crop":
        entry.pop("crop")
    if pre.pad == PreprocessConfig.model_fields["pad"].default:
        entry.pop("pad")
    if pre.interpolation == PreprocessConfig.model_fields["interpolation"].default:
        entry.pop("interpolation")
    return entry


def _conventions(source: Source, model: ov.Model, registered: dict, given: dict) -> PreprocessConfig:
    """Input conventions: the user's flags over the registry's entry over the format's defaults."""
    base = PreprocessConfig(resize="stretch", color="RGB", mean=[0.0] * 3, scale=[1.0] * 3) \
        if source.od_api else PreprocessConfig()
    if source.frozen_od_api:      # the graph's own Preprocessor resizes bilinearly: frames shrink the same way
        base.interpolation = "linear"
    chosen = {**registered, **given}
    pre = base.model_copy(update=chosen)
    try:
        channels = input_info(model).channels
    except ModelError:
        return pre
    if channels == 1 and "color" not in chosen:
        pre.color = "GRAY"
    return pre.model_copy(update={"mean": per_channel(pre.mean, channels, "mean"),
                                   "scale": per_channel(pre.scale, channels, "scale")})


def _default_labels(source: Source) -> list[str] | str:
    if source.od_api_classes == 90 and paths.bundled(COCO_LABELS).is_file():
        return COCO_LABELS
    return []


def default_name(src: Path, precision: str = "FP32") -> str:
    """A registry-safe name from the input's file or folder name (``saved_model`` → its parent's)."""
    path = src.resolve().parent if src.name == "saved_model.pb" else src.resolve()
    if path.name == "saved_model":
        path = path.parent
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem if path.is_file() else path.name).strip("_") or "model"
    return f"{name}_fp16" if precision == "FP16" else name


def parse_numbers(text: str, kind: type = float) -> list:
    """``1,300,300,3`` → [1, 300, 300, 3]; a ConfigError names the bad item."""
    try:
        return [kind(item) for item in text.replace(" ", "").strip("[]").split(",") if item]
    except ValueError:
        raise ConfigError(f"'{text}' is not a comma-separated list of {kind.__name__}s") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="SavedModel folder (TF2 OD API export too), .pb, .onnx, .tflite, "
                                                 ".pdmodel, or an IR .xml to re-save")
    parser.add_argument("--output", type=Path, help="folder for NAME.xml/.bin (default: models/NAME)")
    parser.add_argument("--name", help="model and registry name (default: from the input's name)")
    parser.add_argument("--input-shape", help="fix the input shape, e.g. 1,300,300,3")
    parser.add_argument("--precision", choices=("FP32", "FP16"), default="FP32",
                        help="weights precision (default FP32)")
    parser.add_argument("--adapter", choices=ADAPTERS, help="output adapter recorded in the registry")
    parser.add_argument("--labels", help="labels: a text file (one per line) or a,b,c")
    parser.add_argument("--color", choices=("RGB", "BGR", "GRAY"), help="colour order the model expects")
    parser.add_argument("--mean", help="per-channel mean, e.g. 127.5 or 123.7,116.3,103.5")
    parser.add_argument("--scale", help="per-channel scale: input = (pixel - mean) / scale")
    parser.add_argument("--resize", choices=RESIZE_MODES, help="how frames fit the input")
    parser.add_argument("--embed-preprocess", action="store_true",
                        help="fold colour/mean/scale into the IR (input: uint8 NHWC BGR) instead of "
                             "leaving them to the engine")
    parser.add_argument("--description", default="", help="registry description")
    parser.add_argument("--register", action="store_true",
                        help="add or update the entry in OVSTREAM_HOME/models/models.toml")


def main(args: argparse.Namespace) -> int:
    name = args.name or default_name(args.input, args.precision)
    given = {key: value for key, value in (("color", args.color), ("resize", args.resize),
                                           ("mean", args.mean and parse_numbers(args.mean)),
                                           ("scale", args.scale and parse_numbers(args.scale))) if value}
    shape = parse_numbers(args.input_shape, int) if args.input_shape else None
    labels = labels_value(args.labels) if args.labels else ""
    known = args.adapter or load_registry().get(name, {}).get("adapter")
    if args.register and not known and not inspect_source(args.input).od_api:
        raise ConfigError(f"--register needs --adapter (one of {', '.join(ADAPTERS)}) for a new model '{name}'")
    console = Console()
    with new_progress(console) as progress:
        result = convert(args.input, name, args.output, input_shape=shape, precision=args.precision,
                         embed=args.embed_preprocess, adapter=args.adapter or "", labels=labels, pre=given,
                         description=args.description, progress=progress)
        if args.register:
            with step(progress, f"register '{name}' in {paths.user_registry()}"):
                register_model(name, result.entry)
    for port in result.model.inputs:
        console.print(f"  input  {port.any_name}: {port.partial_shape} {port.element_type.get_type_name()}")
    for port in result.model.outputs:
        console.print(f"  output {port.any_name}: {port.partial_shape} {port.element_type.get_type_name()}")
    pre = result.entry["preprocess"]
    console.print(f"[bold]{result.xml}[/] ({args.precision}); preprocess: {pre['resize']}, {pre['color']}, "
                  f"mean {pre['mean']}, scale {pre['scale']}"
                  + ("" if args.register else "  (not registered: add --register)"))
    return 0
