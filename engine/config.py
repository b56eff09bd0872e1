"""RunConfig: one run's settings, loaded from TOML and validated in one place, with one-line errors.

Every section is a pydantic model whose fields carry their type, range and finiteness; cross-field
rules are validators next to the fields they relate. A config file is validated strictly (no
``"4"`` for 4, no ``1`` for true, no NaN or inf), and every mistake becomes one
:class:`ConfigError` line naming the file, the section, the key, what is allowed and what was
given (with a "did you mean" for a near-miss key). The bounds below are the engine's limits, not
OpenVINO's: values beyond them are mistakes (and would allocate without end). The resolved config
travels to every worker process as JSON (``to_dict`` / ``from_dict``).

To add a key: add a field with its bounds (``Field(default, ge=.., le=..)``) to its section; the
error message, the JSON round trip and the tests' malformed-value table follow from the field.
"""
from __future__ import annotations

import difflib
import glob
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from engine import paths
from engine.errors import ConfigError, ModelError
from engine.geometry import INTERPOLATIONS, RESIZE_MODES
from engine.options import HINTS, MODEL_SUFFIXES

ADAPTERS = ("anchor_ssd", "ssd_detection_output", "tf_od_api", "classification", "nanodet", "yolo")

# Enumerations, defined once (those the command line offers in engine/options.py, light to import).
Hint = Literal[HINTS]
Resize = Literal[RESIZE_MODES]                                  # letterbox | stretch | crop
Interpolation = Literal[("auto", *INTERPOLATIONS)]
Color = Literal["RGB", "BGR", "GRAY"]
Live = Literal["auto", "yes", "no"]

# Engine limits.
MAX_BATCH = 256
MAX_NIREQ = 64
MAX_SLOTS = 1024
MAX_FRAME_SIDE = 16384
MAX_STREAMS = 256

NonEmpty = Annotated[str, Field(min_length=1)]
PropertyValue = str | int | float | bool


def channels_of(color: str) -> int:
    """Channels of the model input for a ``[model.preprocess] color``."""
    return 1 if color == "GRAY" else 3


class Section(BaseModel):
    """A config table: unknown keys and NaN/inf are errors; attributes stay assignable."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def to_dict(self) -> dict:
        return self.model_dump()


class SourceConfig(Section):
    """One stream: a folder, a video file, a camera index or an RTSP/HTTP URL.

    ``[source]`` is the one-stream shorthand; ``[[sources]]`` lists several streams, each taking
    the keys it does not set from ``[source]``.
    """

    uri: NonEmpty = "data/samples"
    name: str = ""                                         # "" = derived from the uri (made unique)
    recursive: bool = False
    loop: int = Field(1, ge=1, le=1_000_000)              # play a video/folder this many times
    live: Live = "auto"                                    # live sources drop oldest frames when behind
    reconnect_attempts: int = Field(10, ge=0, le=10_000)  # live sources: retries (with backoff)
    max_fps: float = Field(0.0, ge=0, le=10_000)          # 0: as fast as the pipeline goes
    realtime: bool = False        # a file paced at its native rate (video FPS; images at max_fps or 30)
    start: int = Field(0, ge=0, le=2**53)   # first frame id; those before it count as written elsewhere and
    # are not read (a folder starts at that file, a video at that frame): how cluster mode resumes a stream


class PreprocessConfig(Section):
    """Input conventions folded into the model with PrePostProcessor."""

    resize: Resize = "letterbox"
    crop: float = Field(0.875, gt=0, le=1)   # crop: the centre fraction of the (scaled) shorter side kept
    interpolation: Interpolation = "auto"    # auto: area shrinking, linear enlarging
    color: Color = "RGB"                     # what the model expects
    mean: list[Annotated[float, Field(ge=-1e6, le=1e6)]] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: list[Annotated[float, Field(gt=0, le=1e6)]] = Field(default_factory=lambda: [1.0, 1.0, 1.0])

    @field_validator("mean", "scale")
    @classmethod
    def _per_channel(cls, value: list[float], info: ValidationInfo) -> list[float]:
        channels = channels_of(info.data.get("color", "RGB"))
        if len(value) not in (1, channels):
            need = "1 value" if channels == 1 else f"1 or {channels} values"
            raise ValueError(f"needs {need} for color {info.data.get('color', 'RGB')}")
        return value


class ModelConfig(Section):
    """The model: a registry name, or a file with its adapter."""

    name: NonEmpty = "ssd_mobilenet_v2_coco"
    path: str = ""                # model file; overrides the registry's file
    adapter: str = ""             # overrides the registry's adapter (one of ADAPTERS)
    labels: list[str] | str = Field(default_factory=list)
    description: str = ""
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    params: dict[str, Any] = Field(default_factory=dict)
    score_threshold: float = -1.0                        # overrides the adapter's default when >= 0
    top_k: int = Field(5, ge=1, le=10_000)               # classification: how many classes per frame

    @field_validator("params")
    @classmethod
    def _finite_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        def finite(v: Any) -> bool:
            if isinstance(v, float):
                return math.isfinite(v)
            return all(map(finite, v.values() if isinstance(v, dict) else v)) if isinstance(v, (list, dict)) else True
        bad = [k for k, v in value.items() if not finite(v)]
        if bad:
            raise ValueError(f"{bad[0]} must be finite (no nan or inf)")
        return value

    @field_validator("score_threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        if not (0 <= value <= 1 or value == -1):
            raise ValueError("must be from 0 to 1 (or -1: the adapter's default)")
        return value


class InferenceConfig(Section):
    """Devices and how each compiles the model."""

    devices: list[NonEmpty] = Field(default_factory=lambda: ["CPU"], min_length=1, max_length=16)
    nireq: int = Field(0, ge=0, le=MAX_NIREQ)     # 0: the device's OPTIMAL_NUMBER_OF_INFER_REQUESTS
    batch: int = Field(0, ge=0, le=MAX_BATCH)       # 0: auto (engine.model.AUTO_BATCH for file sources)
    hint: Hint = "THROUGHPUT"
    streams: int = Field(0, ge=0, le=256)         # 0: chosen by the hint
    threads: int = Field(0, ge=0, le=4096)        # 0: the device decides
    cache_dir: str = "auto"      # model cache (engine.modelcache): auto = the user cache dir, off = none
    properties: dict[str, dict[str, PropertyValue]] = Field(default_factory=dict)  # device → properties


class PipelineConfig(Section):
    """Pool sizes and timing: memory is fixed at start by these numbers."""

    raw_slots: int = Field(8, ge=2, le=MAX_SLOTS)      # at least; every stream gets max(3, raw_slots // streams)
    decoders: int = Field(0, ge=0, le=64)   # decoder processes; 0 = min(streams, CPU cores // 4, 8), at least 1
    max_frame_width: int = Field(1920, ge=16, le=MAX_FRAME_SIDE)   # larger frames are downscaled
    max_frame_height: int = Field(1080, ge=16, le=MAX_FRAME_SIDE)
    input_slots: int = Field(0, ge=0, le=MAX_SLOTS)     # 0: nireq (0: 2 per core, at least 4) + 2, per worker
    reduced_decode: bool = True   # JPEGs far larger than the model input decode at 1/2..1/8 size
    batch_timeout_ms: float = Field(5.0, ge=0, le=60_000)
    heartbeat_s: float = Field(0.25, ge=0.01, le=5)    # a stage silent for 30 s counts as hung
    max_restarts: int = Field(5, ge=0, le=1000)        # per process, before the run gives up


class MqttConfig(Section):
    """``[output.mqtt]``: every result record published to an MQTT broker (off while host is "")."""

    host: str = ""
    port: int = Field(1883, ge=1, le=65535)
    topic: NonEmpty = "ovstream/{stream}/results"   # {stream}: the stream's name
    qos: Literal[0, 1] = 1        # 0 at most once, 1 at least once
    client_id: str = ""           # "": a random one
    clean_session: bool = True    # false: the broker keeps this client id's session across reconnects
    username: str = ""
    password: str = ""
    tls: bool = False
    ca: str = ""                  # CA file ("": the system's)
    cert: str = ""                # client certificate and key (mutual TLS)
    key: str = ""
    insecure: bool = False        # TLS without checking the broker's host name
    keepalive_s: int = Field(30, ge=1, le=65535)
    buffer: int = Field(10000, ge=1, le=10_000_000)   # records held while the broker is away; beyond: dropped
    max_inflight: int = Field(100, ge=1, le=65535)    # records sent but not yet confirmed by the broker
    flush_timeout_s: float = Field(5.0, ge=0, le=20)  # at the end of a run: how long the buffer may drain
    # (bounded well below the supervisor's 30 s hang timeout: a sink that drains sends no heartbeat)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        try:
            topic = value.format(stream="s")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            raise ValueError("must be a topic with no placeholder but {stream}") from None
        if "+" in topic or "#" in topic:
            raise ValueError("must be a topic name without + or # wildcards")
        return value

    @model_validator(mode="after")
    def _session(self) -> "MqttConfig":
        for key in ("ca", "cert", "key"):
            path = getattr(self, key)
            if self.host and self.tls and path and not Path(path).expanduser().is_file():
                raise ValueError(f"{key}: no such file {path}")
        if self.host and not self.client_id and not self.clean_session:
            raise ValueError("clean_session = false needs a client_id (the session's name)")
        return self



class OutputConfig(Section):
    """Sinks: JSON lines, annotated images, annotated video, the run report, MQTT."""

    dir: NonEmpty = "runs/default"
    jsonl: bool = True
    images: bool = False
    video: bool = False
    video_fps: float = Field(25.0, gt=0, le=1000)
    report: bool = True
    status: bool = False          # status.json: the report so far, rewritten every 0.5 s while running
    mqtt: MqttConfig = Field(default_factory=MqttConfig)


class DashboardConfig(Section):
    """The live view."""

    enabled: bool = True
    refresh_hz: float = Field(4.0, ge=0.5, le=60)


class MetricsConfig(Section):
    """``[metrics]``: Prometheus ``/metrics`` served by the supervisor (off while port is 0)."""

    port: int = Field(0, ge=0, le=65535)
    host: NonEmpty = "127.0.0.1"
    linger_s: float = Field(0.0, ge=0, le=3600)   # keep serving this long after the run, for a last scrape


_CLUSTER_ADDRESS = re.compile(r"^(|auto|(ray://)?[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5})$")


class ClusterConfig(Section):
    """``[cluster]``: the streams spread over the nodes of a Ray cluster (off while address is "")."""

    address: str = ""                         # "auto" (the local cluster), HOST:PORT, or ray://HOST:PORT
    resource: NonEmpty = "ovstream_streams"   # the node resource that says how many streams a node sustains
    per_stream: float = Field(1.0, gt=0, le=1e6)   # how much of ``resource`` one stream takes
    max_moves: int = Field(3, ge=0, le=1000)  # a stream whose engine died more often than this fails

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _CLUSTER_ADDRESS.match(value.strip()):
            raise ValueError('must be "auto", HOST:PORT or ray://HOST:PORT')
        return value.strip()


class RunConfig(Section):
    """Everything one ``ovstream run`` needs."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    sources: list[SourceConfig] = Field(default_factory=list, max_length=MAX_STREAMS)  # resolved: never empty
    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> "RunConfig":
        devices = self.inference.devices
        names = {n for d in devices for n in (d, d.split(".")[0].split(":")[0], *d.partition(":")[2].split(",")) if n}
        for name in self.inference.properties:
            if name not in names:
                raise ValueError(f"[inference.properties.{name}] names no device of [inference] devices "
                                 f"({', '.join(devices)})")
        if 0 < self.pipeline.input_slots < len(devices):
            raise ValueError(f"[pipeline] input_slots = {self.pipeline.input_slots} leaves some of the "
                             f"{len(devices)} inference workers of [inference] devices without a slot; "
                             f"use 0 (automatic) or at least {len(devices)}")
        return self

    @classmethod
    def from_dict(cls, data: Any, origin: str = "config") -> "RunConfig":
        """Validate plain data (a parsed TOML file, a stage context) strictly; errors name ``origin``.
        Each ``[[sources]]`` entry takes the keys it does not set from ``[source]``."""
        if isinstance(data, dict) and isinstance(data.get("sources"), list):
            base = {k: v for k, v in data.get("source", {}).items() if k not in ("uri", "name", "start")} \
                if isinstance(data.get("source"), dict) else {}
            data = {**data, "sources": [{**base, **entry} if isinstance(entry, dict) else entry
                                        for entry in data["sources"]]}
        try:
            return cls.model_validate(data, strict=True)
        except ValidationError as exc:
            raise ConfigError(explain(exc, cls, data, origin)) from None


# ---- one line per validation error ---------------------------------------------------------------

def explain(exc: ValidationError, root: type[BaseModel], data: Any, origin: str) -> str:
    """The first error of ``exc`` as one line: file, [section] key, what is allowed, what was given."""
    err = exc.errors()[0]
    model, section, key, field = root, [], None, None
    loc = err["loc"]
    depth = 0
    while depth < len(loc) and key is None:   # walk the sections down to the field the error is in
        part = loc[depth]
        if not isinstance(part, str) or part not in model.model_fields:
            break
        info = model.model_fields[part]
        if _is_section(info.annotation):
            model = info.annotation
            section.append(part)
        elif _is_section(_item(info.annotation)) and depth + 1 < len(loc) and isinstance(loc[depth + 1], int):
            model = _item(info.annotation)                  # one table of a [[name]] list
            section.append(f"[{part}] #{loc[depth + 1] + 1}")
            depth += 1
        else:
            key, field = part, info
        depth += 1
    annotation = field.annotation if field is not None else None
    for part in err["loc"][depth:]:       # into a table of tables: [inference.properties.CPU] KEY
        if typing.get_origin(annotation) is not dict or not isinstance(part, str):
            break
        section += [key] if key is not None else []
        key, annotation, depth = part, typing.get_args(annotation)[1], depth + 1
    label = _label(section)
    given = _lookup(data, err["loc"][:depth])
    if err["type"] == "extra_forbidden" and len(err["loc"]) == depth + 1:
        unknown = str(err["loc"][-1])
        near = difflib.get_close_matches(unknown, model.model_fields, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(model.model_fields)})"
        return f"{origin}: {label} unknown key '{unknown}'{hint}"
    if key is None:
        if not section and err["type"] == "value_error":      # a rule across sections
            return f"{origin}: {_reason(err)}"
        if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            return f"{origin}: {label} must be a table, not {_show(given)}"
        return f"{origin}: {label} {_reason(err)}"
    if err["type"] == "value_error":
        if isinstance(given, dict):                            # a rule about a key inside a table
            return f"{origin}: [{'.'.join([*section, key])}] {_reason(err)}"
        return f"{origin}: {label} {key} {_reason(err)}, not {_show(given)}"
    metadata = field.metadata if annotation is field.annotation else []
    return f"{origin}: {label} {key} must be {describe(annotation, metadata)}, not {_show(given)}"


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


def _item(annotation: Any) -> Any:
    """The item type of ``list[X]``, else None."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def _label(section: list[str]) -> str:
    """``[a.b]``, or ``[[sources]] #2`` inside a list of tables; ``top level`` for none."""
    if not section:
        return "top level"
    if section[0].startswith("["):
        head, *rest = section
        name, _, index = head[1:].partition("] ")
        return f"[[{name}]] {index}".strip() + "".join(f" [{part}]" for part in rest)
    return f"[{'.'.join(section)}]"


def _reason(err: dict) -> str:
    error = (err.get("ctx") or {}).get("error")
    return str(error) if error is not None else err["msg"][:1].lower() + err["msg"][1:]


def _lookup(data: Any, path: tuple) -> Any:
    for part in path:
        if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(annotation: Any, metadata: list | tuple = ()) -> str:
    """What a field accepts, in words: 'an integer from 1 to 256', 'one of 'a', 'b''."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        more = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return describe(inner, [*metadata, *more])
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        each = describe(item)
        if each.startswith(("a string", "a non-empty string")):
            return f"a list{_length(metadata)} of {each[2:]}s"
        return f"a list{_length(metadata)}, each {each}"
    if origin is dict or _is_section(annotation):
        return "a table"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a non-empty string" if any(isinstance(m, annotated_types.MinLen) and m.min_length for m in metadata) \
            else "a string"
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a finite number"
        return kind + _range(metadata)
    return getattr(annotation, "__name__", str(annotation))


def _range(metadata: list | tuple) -> str:
    low = high = ""
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = f">= {_num(m.ge)}"
        elif isinstance(m, annotated_types.Gt):
            low = f"> {_num(m.gt)}"
        elif isinstance(m, annotated_types.Le):
            high = f"<= {_num(m.le)}"
        elif isinstance(m, annotated_types.Lt):
            high = f"< {_num(m.lt)}"
    if low.startswith(">=") and high.startswith("<="):
        return f" from {low[3:]} to {high[3:]}"
    return "".join(f" {part}" for part in (low, "and" if low and high else "", high) if part)


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _length(metadata: list | tuple) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), 0)
    high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    if low and high:
        return f" of {low} to {high} items"
    if high is not None:
        return f" of at most {high} items"
    return f" of at least {low} item{'s' * (low > 1)}" if low else ""


# ---- loading --------------------------------------------------------------------------------------

def read_toml(path: Path) -> dict:
    """Parse a TOML file (or a ``.json`` one: the resolved form a cluster driver hands its
    engines); a missing, binary, non-UTF-8 or malformed file is a :class:`ConfigError`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4096]:
        kind = "UTF-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "binary (NUL bytes)"
        raise ConfigError(f"{path}: not a TOML text file ({kind}); save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                          f"save it as UTF-8") from None
    if Path(path).suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a JSON config must be an object")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def merge_tables(base: dict, override: dict) -> dict:
    """``override`` over ``base``, tables merged key by key (neither is changed)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def load_registry(path: Path | None = None) -> dict[str, dict]:
    """A registry file as ``{name: entry}`` (none there: empty); without ``path``, the model
    registry: the bundled ``models/models.toml`` with the user's (``OVSTREAM_HOME``) over it."""
    if path is not None:
        return read_toml(path) if path.exists() else {}
    return {name: entry for file in paths.registries() for name, entry in load_registry(file).items()}


def find_model(name: str) -> tuple[dict, Path] | None:
    """The registry entry of ``name`` and the registry file it comes from (the user's first)."""
    for file in reversed(paths.registries()):
        entry = load_registry(file).get(name)
        if entry is not None:
            return entry, file
    return None


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Load a config file (default: the bundled configs/default.toml), apply overrides, resolve the
    model. Relative paths are relative to the config file's folder, those of ``overrides`` (the
    command line) to the working directory; either may name a bundled resource (``data/samples``,
    also ``path`` itself: ``configs/mnist.toml``). A bundled config writes to the working directory."""
    cfg_path = paths.resolve(path) if path else paths.bundled(paths.DEFAULT_CONFIG)
    bundled = cfg_path.resolve().is_relative_to(paths.bundled_root().resolve())
    data = anchor_paths(read_toml(cfg_path), cfg_path.absolute().parent, writes_to_cwd=bundled)
    if overrides:
        RunConfig.from_dict(overrides, origin="command line")   # a bad option is named as such
        data = merge_tables(data, anchor_paths(overrides, Path.cwd()))
    cfg = RunConfig.from_dict(data, origin=str(cfg_path))
    resolve_streams(cfg)
    return resolve_model(cfg)


_LIVE_URI = re.compile(r"^([0-9]+|/dev/video.*|(rtsps?|https?)://.*)$", re.IGNORECASE)
CACHE_WORDS = ("auto", "off", "none", "false", "")     # [inference] cache_dir values that are not folders
_INPUT_PATHS = (("model", "path"), ("model", "labels"), ("inference", "cache_dir"),
                ("output", "mqtt", "ca"), ("output", "mqtt", "cert"), ("output", "mqtt", "key"))


def anchor_paths(data: dict, base: Path, writes_to_cwd: bool = False) -> dict:
    """A copy of raw config ``data`` whose relative paths are made absolute: what is read (sources,
    model, labels, certificates) by :func:`engine.paths.resolve` from ``base``; the output folder
    from ``base`` too, or from the working directory for a bundled config (``writes_to_cwd``)."""
    data = merge_tables({}, data)                         # tables copied: the caller's stay as they were
    if isinstance(data.get("sources"), list):
        data["sources"] = [dict(entry) if isinstance(entry, dict) else entry for entry in data["sources"]]

    def table(*keys: str) -> dict | None:
        node = data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else None

    for *keys, key in _INPUT_PATHS:
        node = table(*keys)
        if key == "cache_dir" and node is not None and str(node.get(key, "")).strip().lower() in CACHE_WORDS:
            continue                                # auto / off: not a folder
        if node is not None and isinstance(node.get(key), str) and node[key]:
            node[key] = str(paths.resolve(node[key], base))
    output = table("output")
    if output is not None and isinstance(output.get("dir"), str) and output["dir"]:
        output["dir"] = str((Path.cwd() if writes_to_cwd else base) / Path(output["dir"]).expanduser())
    entries = [table("source")] + (data["sources"] if isinstance(data.get("sources"), list) else [])
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("uri"), str):
            entry["uri"] = _anchor_uri(entry["uri"], base)
    return data


def _anchor_uri(uri: str, base: Path) -> str:
    """A source uri with its path made absolute (cameras and URLs as they are); a glob pattern is
    anchored where it matches (``base``, else the bundled resources)."""
    text = uri.strip()
    if not text or _LIVE_URI.match(text):
        return uri
    if glob.has_magic(text) and not os.path.lexists(base / Path(text).expanduser()):
        pattern = Path(text).expanduser()
        if pattern.is_absolute():
            return str(pattern)
        for root in (base, paths.bundled_root()):
            if glob.glob(str(root / pattern)):
                return str(root / pattern)
        return str(base / pattern)
    return str(paths.resolve(text, base))


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
    matches = sorted(glob.glob(os.path.expanduser(uri)))
    if not matches:
        raise ConfigError(f"[[sources]] uri '{uri}': the pattern matches no file")
    return [entry.model_copy(update={"uri": m, "name": ""}) for m in matches]


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


def resolve_model(cfg: RunConfig) -> RunConfig:
    """Fill the model section from the registry and check the model file and adapter exist.

    Keys the config sets (also single ``[model.preprocess]`` keys) win over the registry entry's.
    A registry entry's file and labels are relative to its registry's folder (or bundled resources).
    """
    model = cfg.model
    found = find_model(model.name)
    if found is None and not model.path:
        known = ", ".join(load_registry()) or "none"
        raise ModelError(f"model '{model.name}' is not in the model registry ({paths.bundled(paths.REGISTRY)}, "
                         f"{paths.user_registry()}; known: {known}); set [model] path to a file")
    if found is not None:
        entry, registry = dict(found[0]), found[1]
        file = entry.pop("file", "")
        merged = RunConfig.from_dict({"model": {**entry, "name": model.name}}, origin=str(registry)).model
        if isinstance(merged.labels, str) and merged.labels:
            merged.labels = str(paths.resolve(merged.labels, registry.parent))
        searched = not model.path
        if searched:
            model.path = str(paths.resolve_model_file(file, registry.parent))
        same_adapter = model.adapter in ("", merged.adapter)
        model.adapter = model.adapter or merged.adapter
        model.labels = model.labels or merged.labels
        model.description = model.description or merged.description
        given = model.preprocess.model_dump(include=model.preprocess.model_fields_set)
        try:
            model.preprocess = PreprocessConfig.model_validate({**merged.preprocess.model_dump(), **given})
        except ValidationError as exc:
            raise ConfigError(explain(exc, PreprocessConfig, {**merged.preprocess.model_dump(), **given},
                                      f"model '{model.name}'").replace("top level", "[model.preprocess]")) \
                from None
        if same_adapter:                    # another adapter's parameters would not apply
            model.params = {**merged.params, **model.params}
    else:
        searched = False
        model.path = str(paths.resolve(model.path))
    path = Path(model.path)
    if not path.exists():
        where = f" (nor in the model search path: {', '.join(str(p) for p in paths.model_search_path())}; " \
            f"model '{model.name}' is not bundled)" if searched else ""
        raise ModelError(f"model file not found: {path}{where}")
    if path.is_file() and path.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{path}: unsupported model format '{path.suffix}' "
                         f"(use {', '.join(MODEL_SUFFIXES)}, or `ovstream convert` first)")
    if model.adapter not in ADAPTERS:
        raise ModelError(f"model '{model.name}': unknown adapter '{model.adapter}' "
                         f"(known: {', '.join(ADAPTERS)})")
    if isinstance(model.labels, str):
        label_path = paths.resolve(model.labels)
        try:
            model.labels = label_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"labels file {label_path}: {getattr(exc, 'strerror', None) or exc}") from None
    return cfg
