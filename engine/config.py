"""RunConfig: one run's settings, loaded from TOML and validated with one-line errors.

Every section is a dataclass; unknown keys and wrong types raise :class:`ConfigError` naming the
file, the section and the key (with a suggestion when the key is a near miss). The resolved
config travels to every worker process as JSON (``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

import difflib
import glob
import os
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, ModelError
from engine.geometry import INTERPOLATIONS, RESIZE_MODES

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
REGISTRY_PATH = MODELS_DIR / "models.toml"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.toml"
ADAPTERS = ("anchor_ssd", "ssd_detection_output", "tf_od_api", "classification", "nanodet", "yolo")
MODEL_SUFFIXES = (".xml", ".onnx", ".tflite", ".pb", ".pdmodel")


@dataclass
class SourceConfig:
    """One stream: a folder, a video file, a camera index or an RTSP/HTTP URL.

    ``[source]`` is the one-stream shorthand; ``[[sources]]`` lists several streams, each taking
    the keys it does not set from ``[source]``.
    """

    uri: str = "data/coco100"
    name: str = ""                # "" = derived from the uri (made unique among the streams)
    recursive: bool = False
    loop: int = 1                 # play a video/folder this many times (synthetic long streams)
    live: str = "auto"            # auto | yes | no: live sources drop oldest frames when behind
    reconnect_attempts: int = 10  # live sources: retries (with backoff) before giving up
    max_fps: float = 0.0          # 0: as fast as the pipeline goes
    realtime: bool = False        # a file paced at its native rate (video FPS; images at max_fps or 30)


@dataclass
class PreprocessConfig:
    """Input conventions folded into the model with PrePostProcessor."""

    resize: str = "letterbox"     # letterbox | stretch | crop
    crop: float = 0.875           # crop: the centre fraction of the (scaled) shorter side kept
    interpolation: str = "auto"   # auto (area shrinking, linear enlarging) | nearest | linear | cubic | area | lanczos
    color: str = "RGB"            # RGB | BGR | GRAY: what the model expects
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])


@dataclass
class ModelConfig:
    """The model: a registry name, or a file with its adapter."""

    name: str = "ssd_mobilenet_v1_coco"
    path: str = ""                # model file; overrides the registry's file
    adapter: str = ""             # overrides the registry's adapter
    labels: list[str] | str = field(default_factory=list)
    description: str = ""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    params: dict[str, Any] = field(default_factory=dict)
    score_threshold: float = -1.0  # overrides the adapter's default when >= 0
    top_k: int = 5                 # classification: how many classes per frame


@dataclass
class InferenceConfig:
    """Devices and how each compiles the model."""

    devices: list[str] = field(default_factory=lambda: ["CPU"])
    nireq: int = 0                # 0: the device's OPTIMAL_NUMBER_OF_INFER_REQUESTS
    batch: int = 1
    hint: str = "THROUGHPUT"      # THROUGHPUT | LATENCY | CUMULATIVE_THROUGHPUT | NONE
    streams: int = 0              # 0: chosen by the hint
    threads: int = 0              # 0: the device decides
    cache_dir: str = ""
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)  # device → properties


@dataclass
class PipelineConfig:
    """Pool sizes and timing: memory is fixed at start by these numbers."""

    raw_slots: int = 8            # at least; every stream gets max(3, raw_slots // streams) of its own
    decoders: int = 0             # decoder processes; 0 = min(streams, CPU cores // 4, 8), at least 1
    max_frame_width: int = 1920   # larger frames are downscaled to fit a raw slot
    max_frame_height: int = 1080
    input_slots: int = 0          # 0: total infer requests + 2 per worker
    reduced_decode: bool = True   # JPEGs far larger than the model input decode at 1/2..1/8 size
    batch_timeout_ms: float = 5.0
    heartbeat_s: float = 0.25
    max_restarts: int = 5         # per process, before the run gives up


@dataclass
class MqttConfig:
    """``[output.mqtt]``: every result record published to an MQTT broker (off while host is "")."""

    host: str = ""
    port: int = 1883
    topic: str = "ovstream/{stream}/results"   # {stream}: the stream's name
    qos: int = 1                  # 0 at most once, 1 at least once
    client_id: str = ""           # "": a random one
    clean_session: bool = True    # false: the broker keeps this client id's session across reconnects
    username: str = ""
    password: str = ""
    tls: bool = False
    ca: str = ""                  # CA file ("": the system's)
    cert: str = ""                # client certificate and key (mutual TLS)
    key: str = ""
    insecure: bool = False        # TLS without checking the broker's host name
    keepalive_s: int = 30
    buffer: int = 10000           # records held while the broker is away; beyond: dropped, counted
    max_inflight: int = 100       # records sent but not yet confirmed by the broker
    flush_timeout_s: float = 5.0  # at the end of a run: how long to wait for the buffer to drain


@dataclass
class OutputConfig:
    """Sinks: JSON lines, annotated images, annotated video, the run report, MQTT."""

    dir: str = "runs/latest"
    jsonl: bool = True
    images: bool = False
    video: bool = False
    video_fps: float = 25.0
    report: bool = True
    mqtt: MqttConfig = field(default_factory=MqttConfig)


@dataclass
class DashboardConfig:
    """The live view."""

    enabled: bool = True
    refresh_hz: float = 4.0


@dataclass
class MetricsConfig:
    """``[metrics]``: Prometheus ``/metrics`` served by the supervisor (off while port is 0)."""

    port: int = 0
    host: str = "127.0.0.1"
    linger_s: float = 0.0         # keep serving this long after the run, for a last scrape


@dataclass
class RunConfig:
    """Everything one ``ovstream run`` needs."""

    source: SourceConfig = field(default_factory=SourceConfig)
    sources: list[SourceConfig] = field(default_factory=list)   # the streams (resolved: never empty)
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, origin: str = "config") -> "RunConfig":
        if isinstance(data, dict) and isinstance(data.get("sources"), list):
            base = {k: v for k, v in data.get("source", {}).items() if k not in ("uri", "name")} \
                if isinstance(data.get("source"), dict) else {}
            data = {**data, "sources": [{**base, **entry} if isinstance(entry, dict) else entry
                                        for entry in data["sources"]]}
        return _build(cls, data, origin, "")


# ---- building dataclasses from plain data, with clear errors ------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hasattr(tp, "__dataclass_fields__"):
        return _build(tp, value, where.split(":")[0], where.split(": ")[-1])
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: Any, origin: str, section: str) -> Any:
    label = f"[{section}]" if section else "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: {label} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(known)})"
            raise ConfigError(f"{origin}: {label} unknown key '{key}'{hint}")
    kwargs = {}
    for name, f in known.items():
        if name in data:
            sub = f"{section}.{name}" if section else name
            kwargs[name] = _coerce(data[name], hints[name], f"{origin}: {sub}")
        elif f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
            raise ConfigError(f"{origin}: {label} is missing '{name}'")
    return cls(**kwargs)


# ---- loading --------------------------------------------------------------------------------------

def read_toml(path: Path) -> dict:
    """Parse a TOML file; a missing or malformed file is a :class:`ConfigError`."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, dict]:
    """The model registry (models/models.toml) as ``{name: entry}``."""
    return read_toml(path) if path.exists() else {}


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Load a config file (default: configs/default.toml), apply overrides, resolve the model."""
    cfg_path = Path(path) if path else DEFAULT_CONFIG
    data = read_toml(cfg_path) if (path or cfg_path.exists()) else {}
    if overrides:
        data = _merge(data, overrides)
    cfg = RunConfig.from_dict(data, origin=str(cfg_path))
    resolve_streams(cfg)
    return resolve_model(cfg)


_LIVE_URI = re.compile(r"^([0-9]+|/dev/video.*|(rtsps?|https?)://.*)$", re.IGNORECASE)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def stream_name(uri: str) -> str:
    """A short readable name for a stream: a file's stem, a folder's name, ``cam0`` for camera 0,
    the last path part (else the host) of a URL; only ``[A-Za-z0-9._-]``."""
    uri = uri.strip()
    if uri.isdigit():
        return f"cam{uri}"
    if "://" in uri:
        rest = uri.split("://", 1)[1].split("?")[0]
        host, _, path = rest.partition("/")
        parts = [p for p in path.split("/") if p]
        raw = Path(parts[-1]).stem if parts else host.split("@")[-1].split(":")[0]
    else:
        path = Path(uri.rstrip("/"))
        raw = path.stem if path.suffix else path.name
    return _NAME_UNSAFE.sub("_", raw).strip("_.") or "stream"


def _expand(entry: SourceConfig) -> list[SourceConfig]:
    """A uri with glob characters that names no file becomes one stream per match."""
    uri = entry.uri.strip()
    if _LIVE_URI.match(uri) or not glob.has_magic(uri) or os.path.lexists(uri):
        return [entry]
    matches = sorted(glob.glob(os.path.expanduser(uri))) or sorted(glob.glob(str(REPO_ROOT / uri)))
    if not matches:
        raise ConfigError(f"[[sources]] uri '{uri}': the pattern matches no file")
    return [SourceConfig(**{**asdict(entry), "uri": m, "name": ""}) for m in matches]


def resolve_streams(cfg: RunConfig) -> RunConfig:
    """Fill ``cfg.sources``: ``[[sources]]`` (globs expanded), else the one ``[source]``; every
    stream gets a unique name (``clip``, ``clip-2``, ...)."""
    entries = [s for entry in (cfg.sources or [cfg.source]) for s in _expand(entry)]
    seen: set[str] = set()
    for entry in entries:
        if entry.name and (_NAME_UNSAFE.search(entry.name) or entry.name in seen):
            raise ConfigError(f"[[sources]] name '{entry.name}': "
                              + ("used twice" if entry.name in seen else "use only letters, digits, '.', '_', '-'"))
        seen.add(entry.name)
    taken = {e.name for e in entries if e.name}
    for entry in entries:
        if not entry.name:
            base = name = stream_name(entry.uri)
            n = 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            entry.name = name
            taken.add(name)
    cfg.sources = entries
    return cfg


def _resolve_path(value: str, *bases: Path) -> Path:
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in bases:
        if (base / candidate).exists():
            return (base / candidate).resolve()
    return (Path.cwd() / candidate).resolve()


def resolve_model(cfg: RunConfig) -> RunConfig:
    """Fill the model section from the registry and check the model file and adapter exist."""
    model = cfg.model
    registry = load_registry()
    if not model.path:
        if model.name not in registry:
            raise ModelError(f"model '{model.name}' is not in {REGISTRY_PATH} "
                             f"(known: {', '.join(registry) or 'none'}); set [model] path to a file")
    entry = dict(registry.get(model.name, {})) if not model.path or model.name in registry else {}
    if entry:
        file = entry.pop("file", "")
        merged = RunConfig.from_dict({"model": {**entry, "name": model.name}},
                                     origin=str(REGISTRY_PATH)).model
        if not model.path:
            model.path = str(_resolve_path(file, MODELS_DIR, REPO_ROOT))
        same_adapter = model.adapter in ("", merged.adapter)
        model.adapter = model.adapter or merged.adapter
        model.labels = model.labels or merged.labels
        model.description = model.description or merged.description
        if model.preprocess == PreprocessConfig():
            model.preprocess = merged.preprocess
        if same_adapter:                    # another adapter's parameters would not apply
            model.params = {**merged.params, **model.params}
    else:
        model.path = str(_resolve_path(model.path, REPO_ROOT))
    path = Path(model.path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_file() and path.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{path}: unsupported model format '{path.suffix}' "
                         f"(use {', '.join(MODEL_SUFFIXES)}, or `ovstream convert` first)")
    if model.adapter not in ADAPTERS:
        raise ModelError(f"model '{model.name}': unknown adapter '{model.adapter}' "
                         f"(known: {', '.join(ADAPTERS)})")
    if isinstance(model.labels, str):
        label_path = _resolve_path(model.labels, REPO_ROOT)
        try:
            model.labels = label_path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelError(f"labels file {label_path}: {exc.strerror}") from None
    _check_values(cfg)
    return cfg


def _check_values(cfg: RunConfig) -> None:
    pre = cfg.model.preprocess
    if pre.resize not in RESIZE_MODES:
        raise ConfigError(f"[model.preprocess] resize must be letterbox, stretch or crop, not '{pre.resize}'")
    if not 0 < pre.crop <= 1:
        raise ConfigError(f"[model.preprocess] crop must be a fraction in (0, 1], not {pre.crop}")
    if pre.interpolation != "auto" and pre.interpolation not in INTERPOLATIONS:
        raise ConfigError(f"[model.preprocess] interpolation must be auto, {', '.join(INTERPOLATIONS)}, "
                          f"not '{pre.interpolation}'")
    if pre.color not in ("RGB", "BGR", "GRAY"):
        raise ConfigError(f"[model.preprocess] color must be RGB, BGR or GRAY, not '{pre.color}'")
    for src in cfg.sources or [cfg.source]:
        if src.live not in ("auto", "yes", "no"):
            raise ConfigError(f"[source] live must be auto, yes or no, not '{src.live}' (stream {src.name or src.uri})")
        if src.loop < 1:
            raise ConfigError(f"[source] loop must be >= 1, not {src.loop} (stream {src.name or src.uri})")
    if cfg.pipeline.decoders < 0:
        raise ConfigError(f"[pipeline] decoders must be >= 0, not {cfg.pipeline.decoders}")
    if not cfg.inference.devices:
        raise ConfigError("[inference] devices is empty: name at least one device, e.g. [\"CPU\"]")
    if cfg.inference.hint not in ("THROUGHPUT", "LATENCY", "CUMULATIVE_THROUGHPUT", "NONE"):
        raise ConfigError(f"[inference] hint must be THROUGHPUT, LATENCY, CUMULATIVE_THROUGHPUT or NONE, "
                          f"not '{cfg.inference.hint}'")
    mqtt = cfg.output.mqtt
    if mqtt.qos not in (0, 1):
        raise ConfigError(f"[output.mqtt] qos must be 0 or 1, not {mqtt.qos}")
    try:
        topic = mqtt.topic.format(stream="s")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"[output.mqtt] topic '{mqtt.topic}': the only placeholder is {{stream}}") from None
    if not topic or "+" in topic or "#" in topic:
        raise ConfigError(f"[output.mqtt] topic '{mqtt.topic}' must be a topic name without + or # wildcards")
    for key in ("ca", "cert", "key"):
        path = getattr(mqtt, key)
        if mqtt.host and mqtt.tls and path and not Path(path).expanduser().is_file():
            raise ConfigError(f"[output.mqtt] {key}: no such file {path}")
    if mqtt.host and not mqtt.client_id and not mqtt.clean_session:
        raise ConfigError("[output.mqtt] clean_session = false needs a client_id (the session's name)")
    for section, value, low in (("output.mqtt", mqtt.port, 1), ("metrics", cfg.metrics.port, 0)):
        if not low <= value <= 65535:
            raise ConfigError(f"[{section}] port must be {low}..65535, not {value}")
    for name, value, low in (("output.mqtt.buffer", mqtt.buffer, 1),
                             ("output.mqtt.max_inflight", mqtt.max_inflight, 1),
                             ("inference.batch", cfg.inference.batch, 1),
                             ("inference.nireq", cfg.inference.nireq, 0),
                             ("pipeline.raw_slots", cfg.pipeline.raw_slots, 2)):
        if value < low:
            section, key = name.rsplit(".", 1)
            raise ConfigError(f"[{section}] {key} must be >= {low}, not {value}")
