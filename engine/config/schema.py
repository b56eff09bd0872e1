"""The sections of a run's config (:class:`RunConfig`) with their types, bounds and cross-field rules.

The bounds below are the engine's limits, not OpenVINO's: values beyond them are mistakes (and
would allocate without end). To add a key: add a field with its bounds (``Field(default, ge=..,
le=..)``) to its section; the error message, the JSON round trip and the tests' malformed-value
table follow from the field.
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from engine.config.explain import explain
from engine.config.options import HINTS
from engine.core.errors import ConfigError
from engine.core.geometry import INTERPOLATIONS, RESIZE_MODES
from engine.core.shapes import area, self_intersecting

# The output adapters' names, defined here once: config (below engine.model in the layers) validates
# model.adapter against them; each adapter class in engine/model/adapters declares one of them as its
# ``name`` (checked when the class is defined) and is found by it (see engine.model.adapters).
ADAPTERS = ("anchor_ssd", "ssd_detection_output", "tf_od_api", "classification", "nanodet", "yolo", "yolox")

# Enumerations, defined once (those the command line offers in engine/config/options.py, light to import).
# The Literals are built from those tuples, which mypy cannot follow: the ignores say so, nothing more.
Hint = Literal[HINTS]  # type: ignore[valid-type]
Resize = Literal[RESIZE_MODES]  # type: ignore[valid-type]   # letterbox | letterbox_topleft | stretch | crop
Interpolation = Literal[("auto", *INTERPOLATIONS)]  # type: ignore[valid-type]
Color = Literal["RGB", "BGR", "GRAY"]
Live = Literal["auto", "yes", "no"]
Scheme = Literal["rtsp", "rtsps", "http", "https", "device"]
STREAM_SCHEMES: tuple[Scheme, ...] = ("rtsp", "rtsps", "http", "https")

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
    track: bool = True            # with [tracking] enabled: false leaves this stream untracked (no ids, no events)
    tracker: dict[str, float | bool | str] = Field(
        default_factory=dict, description="this stream's own [tracking] parameters, e.g. "
        "{ track_buffer = 90, min_hits = 3 } for a camera with long occlusions; the others come from [tracking]")
    detect_every: int = Field(1, ge=1, le=10_000)   # the detector runs on frame ids 0, N, 2N...; with [tracking],
    # the frames between get the tracker's predicted boxes (marked "predicted"): N = camera FPS / detections per s
    start: int = Field(0, ge=0, le=2**53)   # first frame id; those before it count as written elsewhere and
    # are not read (a folder starts at that file, a video at that frame): how cluster mode resumes a stream


class PreprocessConfig(Section):
    """Input conventions folded into the model with PrePostProcessor."""

    resize: Resize = "letterbox"
    crop: float = Field(0.875, gt=0, le=1)   # crop: the centre fraction of the (scaled) shorter side kept
    pad: int = Field(0, ge=0, le=255)        # letterbox: the padding's pixel value (YOLOX: 114)
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
    batch: int = Field(0, ge=0, le=MAX_BATCH)       # 0: auto (engine.model.prepare.AUTO_BATCH for file sources)
    hint: Hint = "THROUGHPUT"
    streams: int = Field(0, ge=0, le=256)         # 0: chosen by the hint
    threads: int = Field(0, ge=0, le=4096)        # 0: the device decides
    cache_dir: str = "auto"      # model cache (engine.model.cache): auto = the user cache dir, off = none
    properties: dict[str, dict[str, PropertyValue]] = Field(default_factory=dict)  # device → properties


class PipelineConfig(Section):
    """Pool sizes and timing: memory is fixed at start by these numbers."""

    raw_slots: int = Field(8, ge=2, le=MAX_SLOTS)      # at least; every stream gets max(3, raw_slots // streams)
    decoders: int = Field(0, ge=0, le=64)   # decoder processes; 0 = min(streams, CPU cores // 4, 8), at least 1
    decode_threads: int = Field(0, ge=0, le=64)   # FFmpeg threads per video stream; 0: 1 once the pipeline
                                                  # decodes as many streams as there are cores, else FFmpeg's own
    max_frame_width: int = Field(1920, ge=16, le=MAX_FRAME_SIDE)   # larger frames are downscaled
    max_frame_height: int = Field(1080, ge=16, le=MAX_FRAME_SIDE)
    input_slots: int = Field(0, ge=0, le=MAX_SLOTS)     # 0: nireq (0: 2 per core, at least 4) + 2, per worker
    reduced_decode: bool = True   # JPEGs far larger than the model input decode at 1/2..1/8 size, and frames
                                  # larger than it are stored at its scale (not when annotating, not crop)
    batch_timeout_ms: float = Field(25.0, ge=0, le=60_000)   # a partial batch waits this long for frames
    heartbeat_s: float = Field(0.25, ge=0.01, le=5)    # a stage silent for 30 s counts as hung
    max_restarts: int = Field(5, ge=0, le=1000)        # per process, before the run gives up


class MqttConfig(Section):
    """``[output.mqtt]``: every result record published to an MQTT broker (off while host is "")."""

    host: str = ""
    port: int = Field(1883, ge=1, le=65535)
    topic: NonEmpty = "ovstream/{stream}/results"   # {stream}: the stream's name
    events_topic: NonEmpty = "ovstream/{stream}/events"   # [tracking] events (events.jsonl lines)
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

    @field_validator("topic", "events_topic")
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
    def _session(self) -> MqttConfig:
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
    snapshots: bool = False       # [tracking] events: snapshots/<stream>/<event>.jpg, the track's best-scoring frame
    view_fps: float = Field(0.0, ge=0, le=60)   # set by ovstream serve from [serve] view_fps: annotated JPEGs
    # per second per watched stream, drawn only while someone watches (0: no live view)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)

    @property
    def annotated(self) -> bool:
        """Whether frames are drawn on (annotated images, video, event snapshots or the live view): the
        stages then keep each frame's pixels, at full resolution, for the postprocessor."""
        return self.images or self.video or self.snapshots or self.view_fps > 0


Coordinate = Annotated[float, Field(ge=0, le=MAX_FRAME_SIDE)]
XY = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]


class Shape(Section):
    """What a line and a zone share: a name, the stream it belongs to, its points, the classes it counts."""

    name: NonEmpty = Field(description="names it in events, counts and metrics")
    stream: str = Field("", description='the stream it belongs to; "": every stream')
    relative: bool = Field(False, description="points as fractions of the frame's width and height (0 to 1)")
    classes: list[NonEmpty] = Field(default_factory=list, description="labels counted; empty: every class")

    def _relative_points(self, points: list[list[float]]) -> None:
        if self.relative and any(v > 1 for p in points for v in p):
            raise ValueError(f"{self.name}: relative points must be from 0 to 1 (fractions of the frame), "
                             f"not {next(p for p in points if any(v > 1 for v in p))}")


class LineConfig(Shape):
    """``[[tracking.lines]]``: a tripwire; objects crossing it are counted, per direction."""

    points: list[XY] = Field(min_length=2, max_length=2)   # [[x1, y1], [x2, y2]]; "in": crossing from its
    # left to its right seen on the image, walking from the first point to the second

    @model_validator(mode="after")
    def _line(self) -> LineConfig:
        self._relative_points(self.points)
        if self.points[0] == self.points[1]:
            raise ValueError(f"{self.name}: a line of zero length ({self.points[0]} twice)")
        return self


class ZoneConfig(Shape):
    """``[[tracking.zones]]``: a polygon; objects entering, leaving and staying are counted."""

    points: list[XY] = Field(min_length=3, max_length=256)   # the corners, in order
    dwell_frames: int = Field(0, ge=0, le=10_000_000)   # a "dwelled" event after this many frames inside; 0: none

    @model_validator(mode="after")
    def _zone(self) -> ZoneConfig:
        self._relative_points(self.points)
        corners = [(p[0], p[1]) for p in self.points]
        if self_intersecting(corners):
            raise ValueError(f"{self.name}: the polygon crosses itself")
        if area(corners) <= 0:
            raise ValueError(f"{self.name}: the polygon has no area")
        return self


def check_classes(tracking: TrackingConfig, labels: list[str]) -> None:
    """Every class a line or zone counts must be one of the model's ``labels`` (unchecked when the model
    has none: its labels are then class numbers); ConfigError otherwise."""
    if not tracking.enabled or not labels:
        return
    for kind, shapes in (("lines", tracking.lines), ("zones", tracking.zones)):
        for number, shape in enumerate(shapes, 1):
            for name in shape.classes:
                if name not in labels:
                    near = difflib.get_close_matches(name, labels, n=1)
                    hint = f" (did you mean '{near[0]}'?)" if near else ""
                    raise ConfigError(f"[[tracking.{kind}]] #{number} {shape.name}: classes names '{name}', "
                                      f"which the model has not{hint}")


class TrackingConfig(Section):
    """``[tracking]``: a ByteTrack tracker per stream gives each detection a ``track_id`` (engine.analytics)."""

    enabled: bool = False
    high_score: float = Field(0.5, ge=0, le=1, description="detections scoring this or more are matched first")
    low_score: float = Field(0.1, ge=0, le=1,
                             description="detections from this up to high_score only continue tracks (2nd pass)")
    new_track_score: float = Field(0.6, ge=0, le=1, description="an unmatched detection starts a track from this")
    match_iou: float = Field(0.2, gt=0, le=1, description="least IoU (times the score) of a first-pass match")
    low_match_iou: float = Field(0.5, gt=0, le=1, description="least IoU of a second-pass (low score) match")
    track_buffer: int = Field(30, ge=0, le=100_000, description="frames a lost track waits to be found again")
    min_hits: int = Field(2, ge=1, le=1000, description="consecutive matched frames before a track gets its id")
    per_class: bool = Field(True, description="a track matches only detections of its class")
    anchor: Literal["bottom", "center"] = "bottom"   # the point of a box that crosses lines and is in zones
    events: bool = True           # events.jsonl (and MQTT events_topic): appeared, left, crossed, entered...
    lines: list[LineConfig] = Field(default_factory=list, max_length=1000)
    zones: list[ZoneConfig] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _scores(self) -> TrackingConfig:
        if self.low_score > self.high_score:
            raise ValueError(f"low_score = {self.low_score} is above high_score = {self.high_score}")
        names = [shape.name for shape in [*self.lines, *self.zones]]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"line and zone names must differ: {twice[0]!r} is used twice")
        return self


TRACKER_PARAMETERS = frozenset(TrackingConfig.model_fields) - {"enabled", "events", "lines", "zones"}


class DashboardConfig(Section):
    """The live view."""

    enabled: bool = True
    refresh_hz: float = Field(4.0, ge=0.5, le=60)


class MetricsConfig(Section):
    """``[metrics]``: Prometheus ``/metrics`` served by the supervisor (off while port is 0)."""

    port: int = Field(0, ge=0, le=65535)
    host: NonEmpty = "127.0.0.1"
    linger_s: float = Field(0.0, ge=0, le=3600)   # keep serving this long after the run, for a last scrape


class ServeConfig(Section):
    """``[serve]``: ``ovstream serve``'s HTTP API (docs/serve.md)."""

    host: NonEmpty = "127.0.0.1"      # loopback only unless set; any other address needs a token
    port: int = Field(8080, ge=0, le=65535)   # 0: any free port (printed at start)
    token_file: str = ""    # a file holding the bearer token every request must carry (env OVSTREAM_TOKEN wins)
    roots: list[NonEmpty] = Field(default_factory=list)   # folders the file uris of POST /streams must be under
    schemes: list[Scheme] = Field(default_factory=lambda: list(STREAM_SCHEMES))  # what POST /streams opens:
    # stream URLs of these schemes, and with "device", this machine's cameras
    max_streams: int = Field(8, ge=1, le=MAX_STREAMS)     # streams open at once; one more is a 409
    max_body_bytes: int = Field(16384, ge=256, le=1 << 20)   # a larger request body is a 413
    view_fps: float = Field(5.0, ge=0, le=60)   # GET /streams/{name}/video.mjpg: frames per second per watched
    # stream (0: no live view, and the stages keep no frame's pixels for it)
    state: bool = True                # keep the stream list in <output dir>/streams.json and resume it at start


_CLUSTER_ADDRESS = re.compile(r"^(|auto|(ray://)?[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5})$")


class ClusterConfig(Section):
    """``[cluster]``: the streams spread over the nodes of a Ray cluster (off while address is "")."""

    address: str = ""                         # "auto" (the local cluster), HOST:PORT, or ray://HOST:PORT
    resource: NonEmpty = "ovstream_streams"   # the node resource that says how many streams a node sustains
    per_stream: float = Field(1.0, gt=0, le=1e6)   # how much of ``resource`` one stream takes
    max_moves: int = Field(3, ge=0, le=1000)  # a stream whose engine died more often than this fails
    wait_s: float = Field(300.0, gt=0, le=86400)  # a stream that finds no node with room this long fails
    engine_dir: str = ""                      # "": each engine works in its node's temp dir, removed after the run;
    # an absolute path (the same on every node, e.g. a shared filesystem): engines keep their folders there

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _CLUSTER_ADDRESS.match(value.strip()):
            raise ValueError('must be "auto", HOST:PORT or ray://HOST:PORT')
        return value.strip()

    @field_validator("engine_dir")
    @classmethod
    def _engine_dir(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("must be an absolute path (the same on every node), or \"\" for each node's temp dir")
        return value


class RunConfig(Section):
    """Everything one ``ovstream run`` needs."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    sources: list[SourceConfig] = Field(default_factory=list, max_length=MAX_STREAMS)  # resolved: never empty
    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> RunConfig:
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
        for number, src in enumerate(self.streams, 1):
            where = f"[[sources]] #{number}" if self.sources else "[source]"
            if src.tracker:
                self.tracking_of(src)       # one line naming the stream for an unknown or bad parameter
            if src.detect_every > 1 and not (self.tracking.enabled and src.track):
                raise ValueError(f"{where} detect_every = {src.detect_every} needs [tracking] enabled = true "
                                 "and the stream tracked (the frames between detections get the tracker's "
                                 "predicted boxes)")
        if self.output.snapshots and not (self.tracking.enabled and self.tracking.events):
            raise ValueError("[output] snapshots = true needs [tracking] enabled = true (and events = true): "
                             "a snapshot is taken per event")
        if self.tracking.enabled and not self.output.jsonl:
            raise ValueError("[tracking] enabled = true needs [output] jsonl = true (a restarted postprocessor "
                             "rebuilds its tracks from results.jsonl)")
        return self

    def tracking_of(self, src: SourceConfig) -> TrackingConfig:
        """``[tracking]`` with ``src``'s own tracker parameters over it."""
        if not src.tracker:
            return self.tracking
        unknown = sorted(set(src.tracker) - TRACKER_PARAMETERS)
        name = src.name or src.uri
        if unknown:
            raise ValueError(f"stream {name!r}: tracker has no parameter {unknown[0]!r} (it takes "
                             f"{', '.join(sorted(TRACKER_PARAMETERS))})")
        try:
            return TrackingConfig.model_validate({**self.tracking.model_dump(), **src.tracker})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            reason = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"stream {name!r}: tracker {field + ': ' if field else ''}{reason}") from None

    @property
    def streams(self) -> list[SourceConfig]:
        """One source per stream: ``sources``, which :func:`engine.config.resolve_streams` fills (every
        loaded config's is never empty), else the one ``[source]`` of a config not resolved yet."""
        return self.sources or [self.source]

    @classmethod
    def from_dict(cls, data: Any, origin: str = "config") -> RunConfig:
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
