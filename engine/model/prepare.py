"""Model loading shared by the supervisor (checks) and the inference workers (compile).

:func:`prepare_model` folds the input conventions into the graph with PrePostProcessor, so
the engine only ever feeds ``uint8`` NHWC BGR pixels of the model's input size: layout, colour
order, mean/scale and the element type conversion run inside OpenVINO.
"""
from __future__ import annotations

import difflib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from openvino.frontend import FrontEndManager

from engine.config import InferenceConfig, ModelConfig, RunConfig, channels_of
from engine.core.errors import ConfigError, DeviceError, ModelError, reason
from engine.model.runtime import ov  # before any other openvino import: see its docstring
from engine.model.tflite_ops import EXTENSIONS

log = logging.getLogger(__name__)

AUTO_BATCH = 4   # [inference] batch = 0: frames per request when batches fill and the graph takes them
# batch = 0 with live or paced sources: AUTO_BATCH from this many streams on. At 30 FPS each, 8 streams
# bring a batch's 4 frames within [pipeline] batch_timeout_ms (25) nearly always (97 % with random phases),
# so no request runs half empty; the face detector then costs 6.0 core-ms per frame against 6.7-6.8 at
# batch 1 (fewer messages per frame on every hop after the decoder), docs/benchmarks.md "Stream density".
LIVE_BATCH_STREAMS = 8


@dataclass(frozen=True)
class InputInfo:
    """What the engine must feed: a uint8 BGR image of ``width × height``."""

    name: str
    layout: str          # NHWC or NCHW (the model's own)
    height: int
    width: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (the TFLite/ONNX readers' native log lines) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read_model(core: ov.Core, path: str) -> ov.Model:
    """Read a model file with one clear error for anything OpenVINO cannot read. A ``.tflite`` file
    goes through the TFLite frontend with the engine's conversion extensions (:mod:`engine.model.tflite_ops`:
    ``TFLite_Detection_PostProcess``), the same ones ``ovstream convert`` uses."""
    if not Path(path).exists():
        raise ModelError(f"model file not found: {path}")
    try:
        with quiet_stderr():
            if Path(path).suffix.lower() == ".tflite":
                return read_tflite(path)
            return core.read_model(path)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
        raise ModelError(f"cannot read model {path}: {reason(exc)}") from None


def read_tflite(path: str) -> ov.Model:
    """Convert a TFLite file with :data:`engine.model.tflite_ops.EXTENSIONS` added to the frontend."""
    frontend = FrontEndManager().load_by_framework("tflite")
    for extension in EXTENSIONS:
        frontend.add_extension(extension)
    return frontend.convert(frontend.load(path))


def input_info(model: ov.Model, params: dict | None = None) -> InputInfo:
    """The single image input: its name, layout and spatial size."""
    params = params or {}
    images = [i for i in model.inputs if i.get_partial_shape().rank.is_static
              and i.get_partial_shape().rank.get_length() == 4]
    if len(images) != 1:
        raise ModelError(f"model needs exactly one 4-D image input, has "
                         f"{[str(i.get_partial_shape()) for i in model.inputs]}")
    port = images[0]
    shape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else -1 for d in shape]
    layout = params.get("layout") or ("NCHW" if dims[1] in (1, 3) and dims[3] not in (1, 3) else "NHWC")
    h, w, c = (dims[2], dims[3], dims[1]) if layout == "NCHW" else (dims[1], dims[2], dims[3])
    size = params.get("input_size")
    if (h <= 0 or w <= 0) and size:
        h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ModelError(f"model input {shape} has a dynamic size: set params.input_size = [H, W]")
    return InputInfo(port.get_any_name(), layout, h, w, c if c > 0 else 3)


def output_shapes(model: ov.Model | ov.CompiledModel) -> dict[str, list[int]]:
    """``{output name: shape}`` (dynamic dims as -1) for the adapter's start-up check."""
    out = {}
    for i, port in enumerate(model.outputs):
        names = port.get_names()
        name = port.get_any_name() if names else f"output{i}"
        out[name] = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
    return out


def prepare_model(model: ov.Model, cfg: ModelConfig, batch: int) -> tuple[ov.Model, InputInfo]:
    """Fold uint8 NHWC BGR → model layout/colour/scale into ``model`` and set the batch."""
    info = input_info(model, cfg.params)
    shape = [batch, info.channels, info.height, info.width] if info.layout == "NCHW" \
        else [batch, info.height, info.width, info.channels]
    try:
        model.reshape({info.name: shape})
    except Exception as exc:
        if batch == 1:
            raise ModelError(f"cannot prepare {cfg.path} for input {shape}: {reason(exc)}") from None
        raise ModelError(f"cannot set batch {batch} on {cfg.path}: the graph fixes its batch size (use batch = 1; "
                         f"OpenVINO says: {reason(exc)})") from None
    pre = cfg.preprocess
    ppp = ov.preprocess.PrePostProcessor(model)
    inp = ppp.input(info.name)
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
        .set_color_format(ov.preprocess.ColorFormat.BGR) \
        .set_shape([batch, info.height, info.width, 3])
    inp.model().set_layout(ov.Layout(info.layout))
    steps = inp.preprocess()
    if pre.color == "RGB":
        steps.convert_color(ov.preprocess.ColorFormat.RGB)
    elif pre.color == "GRAY":
        steps.convert_color(ov.preprocess.ColorFormat.GRAY)
    channels = 1 if pre.color == "GRAY" else 3
    mean, scale = list(pre.mean)[:channels], list(pre.scale)[:channels]
    normalise = any(m != 0 for m in mean) or any(s != 1 for s in scale)
    if normalise or model.input(info.name).get_element_type() != ov.Type.u8:
        steps.convert_element_type(ov.Type.f32)    # uint8 models (TF OD API) take the pixels as they are
    if any(m != 0 for m in mean):
        steps.mean(mean if len(set(mean)) > 1 else mean[0])
    if any(s != 1 for s in scale):
        steps.scale(scale if len(set(scale)) > 1 else scale[0])
    for port in model.outputs:
        ppp.output(port.get_any_name() if port.get_names() else model.outputs.index(port)) \
            .tensor().set_element_type(ov.Type.f32)
    try:
        return ppp.build(), info
    except Exception as exc:
        raise ModelError(f"cannot fold preprocessing into {cfg.path}: {reason(exc)}") from None


def check_preprocess(info: InputInfo, cfg: ModelConfig) -> None:
    """The model's input must be an image of 1 or 3 channels, and ``[model.preprocess]`` color (and
    so the mean/scale lengths) must fit them."""
    name = Path(cfg.path).name
    if info.channels not in (1, 3):
        size = f"{info.channels}×{info.height}×{info.width}" if info.layout == "NCHW" \
            else f"{info.height}×{info.width}×{info.channels}"
        layout = cfg.params.get("layout")
        fix = (f"[model.params] layout = '{layout}' reads it so; remove it or use the other layout" if layout
               else "set [model.params] layout = 'NCHW' or 'NHWC' if it was guessed wrong")
        raise ModelError(f"the input of {name} read as {info.layout} is {size}, not an image of 1 or 3 "
                         f"channels: {fix}")
    color = cfg.preprocess.color
    if channels_of(color) != info.channels:
        fit = "GRAY" if info.channels == 1 else "RGB or BGR"
        raise ConfigError(f"[model.preprocess] color {color} gives {channels_of(color)} channel(s), but the "
                          f"input of {name} has {info.channels}: use {fit}")


# The [inference] keys that become OpenVINO properties (for messages about them).
CONFIG_KEYS = {"PERFORMANCE_HINT": "[inference] hint", "NUM_STREAMS": "[inference] streams",
               "INFERENCE_NUM_THREADS": "[inference] threads", "PERFORMANCE_HINT_NUM_REQUESTS": "[inference] nireq"}


def _table(cfg: InferenceConfig, device: str) -> str:
    """The name of the ``[inference.properties.NAME]`` table for ``device``: its own, else its family's."""
    return device if device in cfg.properties else device.split(".")[0].split(":")[0]


def raw_properties(cfg: InferenceConfig, device: str) -> dict:
    """The ``[inference.properties.DEVICE]`` table that applies to ``device`` (exact name, else family)."""
    return cfg.properties.get(_table(cfg, device), {})


def _config_key(cfg: InferenceConfig, device: str, key: str) -> str:
    """Where the config sets the property ``key`` for ``device``."""
    if key in raw_properties(cfg, device):
        return f"[inference.properties.{_table(cfg, device)}] {key}"
    return CONFIG_KEYS.get(key, key)


def check_properties(core: ov.Core, cfg: InferenceConfig, device: str) -> None:
    """Every property the config sets for ``device`` must be one it reports as supported and
    writable (``SUPPORTED_PROPERTIES``); values are tried by :func:`preflight_compile`."""
    base = device.split(".")[0].split(":")[0]
    try:
        supported = core.get_property(base, "SUPPORTED_PROPERTIES")
    except Exception:  # a device without the query: OpenVINO's compile will judge
        return
    for key in compile_properties(cfg, device):
        if str(supported.get(key, "")) != "RW":
            writable = [k for k, mode in supported.items() if str(mode) == "RW"]
            near = difflib.get_close_matches(key, writable, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"{base} takes: {', '.join(sorted(writable))}"
            what = "is read-only on" if key in supported else "is not a property of"
            where = _config_key(cfg, device, key)
            where += "" if where.endswith(key) else f" ({key})"
            raise ConfigError(f"{where} {what} {base} ({hint})")


def preflight_compile(core: ov.Core, cfg: RunConfig, device: str, batch: int) -> None:
    """Compile the prepared model once with the configured properties, so that a value the device
    refuses is a one-line error before any process starts."""
    model, _ = prepare_model(read_model(core, cfg.model.path), cfg.model, batch)
    props = compile_properties(cfg.inference, device)
    try:
        core.compile_model(model, device, props)
    except Exception as exc:
        why = reason(exc)
        named = [k for k in props if k in why] or list(raw_properties(cfg.inference, device))
        where = ", ".join(_config_key(cfg.inference, device, k) for k in named)
        raise ConfigError(f"{where}: {device} refused it: {why}") from None


def compile_properties(cfg: InferenceConfig, device: str) -> dict:
    """OpenVINO properties for ``device`` from the config (hint, streams, threads, raw extras)."""
    props: dict = {}
    base = device.split(".")[0].split(":")[0]
    if cfg.hint != "NONE":
        props["PERFORMANCE_HINT"] = cfg.hint
    if cfg.streams > 0 and base not in ("AUTO", "MULTI", "HETERO"):
        props["NUM_STREAMS"] = str(cfg.streams)
    if cfg.threads > 0 and base == "CPU":
        props["INFERENCE_NUM_THREADS"] = cfg.threads
    if cfg.nireq > 0 and cfg.hint in ("THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
        props["PERFORMANCE_HINT_NUM_REQUESTS"] = cfg.nireq
    props.update(raw_properties(cfg, device))
    return props


def base_devices(device: str) -> list[str]:
    """Physical devices named by a device string: 'GPU.1' → ['GPU.1'], 'MULTI:CPU,GPU' → both."""
    if ":" in device:
        return [d for d in device.split(":", 1)[1].split(",") if d]
    return [] if device in ("AUTO", "MULTI", "HETERO", "BATCH") else [device]


def check_devices(core: ov.Core, devices: list[str]) -> None:
    """Raise :class:`DeviceError` naming the available devices for any device not listed."""
    available = core.available_devices
    families = {d.split(".")[0] for d in available}
    for device in devices:
        for name in base_devices(device):
            if name not in available and name not in families:
                raise DeviceError(f"device '{name}' is not available (OpenVINO lists: "
                                  f"{', '.join(available) or 'none'})")


def compile_model(core: ov.Core, model: ov.Model | str, device: str, cfg: InferenceConfig) -> ov.CompiledModel:
    """Compile (a model, or an IR file by path) with the configured properties, OpenVINO's compiled
    blobs cached under ``[inference] cache_dir``; failures become one :class:`DeviceError` line."""
    from engine.model.cache import ModelCache, cache_root, writable

    root = writable(cache_root(cfg.cache_dir))
    if root is not None:
        core.set_property({"CACHE_DIR": str(ModelCache(root).compiled_dir)})
    try:
        return core.compile_model(model, device, compile_properties(cfg, device))
    except Exception as exc:
        raise DeviceError(f"compiling on {device} failed: {reason(exc)}") from None


def load_compiled(core: ov.Core, cfg: RunConfig, device: str, batch: int) -> ov.CompiledModel:
    """The run's model prepared for ``batch`` and compiled on ``device``: from the model cache's
    IR when the supervisor's checks stored it (no reading of the original file), else read,
    prepared and stored now."""
    from engine.model.cache import ModelCache, cache_root, writable

    root = writable(cache_root(cfg.inference.cache_dir))
    cache = ModelCache(root) if root is not None else None
    hit = cache.lookup(cfg.model, batch) if cache is not None else None
    if hit is not None:
        try:
            return compile_model(core, str(hit[0]), device, cfg.inference)
        except DeviceError as exc:    # a damaged entry: the original file still decides
            log.warning("the cached model %s did not compile (%s): reading %s", hit[0].parent, exc, cfg.model.path)
            if cache is not None:
                cache.discard(cfg.model, batch)
    original = read_model(core, cfg.model.path)
    facts = model_facts(original, cfg.model)
    model, _ = prepare_model(original, cfg.model, batch)
    if cache is not None:
        cache.store(cfg.model, batch, model, facts)
    return compile_model(core, model, device, cfg.inference)


def model_facts(model: ov.Model, cfg: ModelConfig) -> dict:
    """What the start-up checks need of the original model: its input and output shapes, and
    whether its graph takes :data:`AUTO_BATCH` frames per request."""
    return {"input": asdict(input_info(model, cfg.params)), "outputs": output_shapes(model),
            "batchable": takes_batch(model, cfg)}


def takes_batch(model: ov.Model, cfg: ModelConfig, batch: int = AUTO_BATCH) -> bool:
    """Whether ``model`` can be prepared for ``batch`` frames (tried on a copy)."""
    try:
        prepare_model(model.clone(), cfg, batch)
    except ModelError:
        return False
    return True


def device_info(compiled: ov.CompiledModel) -> dict[str, str]:
    """What the device chose, in benchmark_app's words: hint, streams, optimal requests, threads."""
    info = {}
    for key in ("PERFORMANCE_HINT", "NUM_STREAMS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS", "INFERENCE_NUM_THREADS",
                "INFERENCE_PRECISION_HINT", "EXECUTION_DEVICES"):
        try:
            info[key] = str(compiled.get_property(key))
        except Exception:  # not every device reports every property
            continue
    return info


def zeros_input(info: InputInfo, batch: int) -> np.ndarray:
    """A blank batch of the shape the prepared model takes (for warm-up and benchmarks)."""
    return np.zeros((batch, info.height, info.width, 3), dtype=np.uint8)
