"""Every message that crosses an engine socket, defined once for both ends.

Headers are msgpack maps with a ``t`` (type) key. Pixels never travel here: frames live in
shared-memory slots and a message only names the slot. Output tensors of inference lie in the
worker's output slot, or travel as ZeroMQ frames beside the header (see :class:`ResultMsg`),
never inside it.
Decoding is bounded: oversized or malformed input raises :class:`MessageError`, never crashes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import msgpack

MAX_HEADER_BYTES = 1 << 20          # a header larger than 1 MiB is refused
MAX_TENSOR_BYTES = 256 << 20        # one output tensor frame
_UNPACK_LIMITS = dict(
    max_str_len=64 << 10,
    max_bin_len=64 << 10,
    max_array_len=1 << 16,
    max_map_len=1 << 12,
    max_ext_len=0,
)


class MessageError(ValueError):
    """A frame on an engine socket that is not a valid message."""


@dataclass(slots=True)
class FrameRef:
    """One frame travelling through the pipeline (no pixels, only where they are).

    ``frame_id`` is the frame's sequence number within its stream, deterministic for file
    sources (its position in the source, counting loops), so a replay after a crash yields the
    same ids and the sinks can deduplicate. ``stream`` is the stream's index in the run's
    resolved source list; ``epoch`` the restart count of the decoder instance that read it
    (its raw slot is released to that instance only).
    """

    frame_id: int
    source: str                      # file path or stream URI
    index: int                       # frame index inside ``source`` (0 for a still image)
    raw_slot: int = -1               # slot in the decoder's raw pool; -1 once released
    height: int = 0                  # frame as stored in the raw slot
    width: int = 0
    orig_height: int = 0             # frame as it came from the source (before any fit-to-slot)
    orig_width: int = 0
    geometry: list[float] = field(default_factory=list)  # [sx, sy, pad_x, pad_y] model→slot
    stamps: dict[str, int] = field(default_factory=dict)  # stage name → time.monotonic_ns()
    stream: int = 0
    epoch: int = 0

    def to_wire(self) -> list:
        return [self.frame_id, self.source, self.index, self.raw_slot, self.height, self.width,
                self.orig_height, self.orig_width, self.geometry, self.stamps, self.stream, self.epoch]

    @classmethod
    def from_wire(cls, item: Any) -> FrameRef:
        if not isinstance(item, list) or len(item) != 12:
            raise MessageError("frame reference must be a 12-item list")
        ref = cls(*item)
        ints = (ref.frame_id, ref.index, ref.raw_slot, ref.height, ref.width, ref.orig_height, ref.orig_width,
                ref.stream, ref.epoch)
        if (not _INT.issuperset(map(type, ints)) or type(ref.source) is not str
                or type(ref.geometry) is not list or not _NUMBER.issuperset(map(type, ref.geometry))
                or type(ref.stamps) is not dict or not _STR.issuperset(map(type, ref.stamps))
                or not _INT.issuperset(map(type, ref.stamps.values()))):
            raise MessageError("frame reference has wrong field types")
        return ref


_INT, _NUMBER, _STR = frozenset({int}), frozenset({int, float}), frozenset({str})   # exact types: a bool is no int


class Message:
    """Base of all header messages: msgpack map with the type tag ``t``."""

    TYPE: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            Message._registry[cls.TYPE] = cls

    def _fields(self) -> dict[str, Any]:
        out = {}
        for name in _schema(type(self)).names:
            value = getattr(self, name)
            if isinstance(value, FrameRef):
                value = value.to_wire()
            elif isinstance(value, list) and value and isinstance(value[0], FrameRef):
                value = [v.to_wire() for v in value]
            out[name] = value
        return out

    def encode(self) -> bytes:
        """Serialise to one msgpack frame."""
        body = self._fields()
        body["t"] = self.TYPE
        data = msgpack.packb(body, use_bin_type=True)
        if len(data) > MAX_HEADER_BYTES:
            raise MessageError(f"{self.TYPE} message of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
        return data


def decode(data: bytes | memoryview) -> Message:
    """Decode one header frame into its message class, with size and shape checks."""
    if len(data) > MAX_HEADER_BYTES:
        raise MessageError(f"message of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MessageError(f"undecodable message: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise MessageError("message is not a map")
    cls = Message._registry.get(body.pop("t", None))
    if cls is None:
        raise MessageError("message has an unknown type tag")
    schema = _schema(cls)
    if not schema.known.issuperset(body):
        raise MessageError(f"{cls.TYPE} message has unknown fields {sorted(set(body) - schema.known)}")
    try:
        if "frame" in body:
            body["frame"] = FrameRef.from_wire(body["frame"])
        if "frames" in body:
            if not isinstance(body["frames"], list):
                raise MessageError("frames must be a list")
            body["frames"] = [FrameRef.from_wire(f) for f in body["frames"]]
        msg = cls(**body)
    except TypeError as exc:
        raise MessageError(f"{cls.TYPE} message is incomplete: {exc}") from None
    _check_types(msg)
    return msg


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "int": int, "str": str, "bool": bool, "dict": dict, "float": (int, float)}


def _check_types(msg: Message) -> None:
    """Every field has the type its class declares (so a peer cannot smuggle in a crash)."""
    for name, declared, ok in _schema(type(msg)).checks:
        if not ok(getattr(msg, name)):
            raise MessageError(f"{msg.TYPE} message: field '{name}' is not {declared}")


class _Schema:
    """A message class's field names and, per field whose type can be checked, its check."""

    def __init__(self, cls: type[Message]) -> None:
        declared = [(f.name, str(f.type)) for f in fields(cls)]  # type: ignore[arg-type]
        self.names = tuple(name for name, _ in declared)
        self.known = frozenset(self.names)
        self.checks = tuple((name, kind, check) for name, kind in declared
                            if (check := _checker(kind)) is not None)


_SCHEMAS: dict[type[Message], _Schema] = {}


def _schema(cls: type[Message]) -> _Schema:
    """``cls``'s schema, made on its first message."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = _Schema(cls)
    return schema


def _checker(declared: str) -> Callable[[Any], bool] | None:
    """The check of a value declared ``declared``, or None when there is none to make here
    (FrameRef fields are checked by :meth:`FrameRef.from_wire`)."""
    outer, _, inner = declared.partition("[")
    if outer == "dict" and inner:           # dict[K, V]: every key and value as declared too
        key, _, item = inner.rstrip("]").partition(", ")
        return lambda value: isinstance(value, dict) and all(_is(k, key) and _is(v, item) for k, v in value.items())
    if outer in _SCALARS:
        return lambda value: _is(value, outer)
    if outer == "list":
        element = _SCALARS.get(inner.rstrip("]"))
        if element is None:
            return lambda value: isinstance(value, list)
        return lambda value: isinstance(value, list) and all(
            isinstance(v, element) and not isinstance(v, bool) for v in value)
    return None


def _is(value: Any, declared: str) -> bool:
    """``value`` is of scalar type ``declared`` (a bool is no int; other types are not checked here)."""
    if declared not in _SCALARS:
        return True
    return isinstance(value, _SCALARS[declared]) and not (declared == "int" and isinstance(value, bool))


# ---- data plane -------------------------------------------------------------------------------

@dataclass(slots=True)
class FrameMsg(Message):
    """decoder → preprocessor: a decoded BGR uint8 frame sits in ``frame.raw_slot``."""

    TYPE: ClassVar[str] = "frame"
    frame: FrameRef
    generation: int = 0


@dataclass(slots=True)
class EndOfSource(Message):
    """decoder → preprocessor and postprocessor: stream ``stream`` is exhausted.

    ``total`` is the number of frame ids emitted (0..total-1, errors included); ``drops`` the
    frames read but dropped under backpressure (live sources only).
    """

    TYPE: ClassVar[str] = "eos"
    total: int
    drops: int = 0
    stream: int = 0
    generation: int = 0


@dataclass(slots=True)
class BatchMsg(Message):
    """preprocessor → one inference worker: ``frames`` are packed in input slot ``slot``.

    ``batch_id`` is unique per dispatch: the slot is released only by a release naming it, so a
    late release of an earlier dispatch of the same slot can never free a slot in use.
    """

    TYPE: ClassVar[str] = "batch"
    slot: int
    frames: list[FrameRef]
    batch_id: int = 0
    generation: int = 0


@dataclass(slots=True)
class CreditMsg(Message):
    """inference → preprocessor, once per worker instance after compile: its ``credits`` (infer
    requests). A credit comes back when the postprocessor releases the batch that used it."""

    TYPE: ClassVar[str] = "credit"
    worker: str                      # instance identity "name@pid"
    credits: int
    generation: int = 0


@dataclass(slots=True)
class TensorSpec:
    """Describes one output tensor of a :class:`ResultMsg`: in its output slot, or the frame that
    follows the header."""

    name: str
    dtype: str
    shape: list[int]

    def numpy_dtype(self) -> Any:
        """Its numpy dtype; MessageError for an unknown one or one that holds objects."""
        import numpy as np

        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise MessageError(f"unknown tensor dtype {self.dtype!r}") from None
        if dtype.hasobject:
            raise MessageError("object tensors are not allowed")
        return dtype


@dataclass(slots=True)
class ResultMsg(Message):
    """inference → postprocessor: header; each output tensor follows as its own frame, or lies in
    slot ``slot`` of the worker's output pool ``pool`` (:class:`~engine.protocol.shm.PoolSpec` fields; laid
    out by :func:`~engine.protocol.shm.tensor_offsets`), where the request wrote it.

    ``outputs`` lists ``[name, dtype, shape]`` for each tensor, as the graph returns it for the
    batch (the postprocessor finds each frame's rows). ``error`` set: the batch failed
    and no tensors follow. ``slot``/``batch_id`` name the input slot the postprocessor releases
    once it holds the result (so a worker that dies before its result is delivered loses nothing).
    """

    TYPE: ClassVar[str] = "result"
    frames: list[FrameRef]
    worker: str
    device: str
    outputs: list[list] = field(default_factory=list)
    slot: int = -1
    batch_id: int = 0
    error: str = ""
    generation: int = 0
    pool: dict = field(default_factory=dict)

    def tensor_specs(self) -> list[TensorSpec]:
        specs = []
        for item in self.outputs:
            if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                    or not isinstance(item[1], str) or not isinstance(item[2], list)):
                raise MessageError("result output spec must be [name, dtype, shape]")
            if not all(isinstance(d, int) and d >= 0 for d in item[2]):
                raise MessageError("result output shape must be non-negative integers")
            specs.append(TensorSpec(item[0], item[1], list(item[2])))
        return specs


@dataclass(slots=True)
class ErrorMsg(Message):
    """any stage → postprocessor: this frame failed; it becomes an error record."""

    TYPE: ClassVar[str] = "error"
    frame: FrameRef
    stage: str
    error: str
    generation: int = 0


@dataclass(slots=True)
class SkipMsg(Message):
    """preprocessor → postprocessor: a frame its stream's ``detect_every`` leaves undetected; its record
    gets the tracker's predicted boxes."""

    TYPE: ClassVar[str] = "skip"
    frame: FrameRef
    generation: int = 0


@dataclass(slots=True)
class ReleaseMsg(Message):
    """Slots free again: raw slots (→ the decoder instance ``epoch`` that owns them), or input
    slots of dispatches ``batch_ids`` (postprocessor → preprocessor)."""

    TYPE: ClassVar[str] = "release"
    slots: list[int]
    batch_ids: list[int] = field(default_factory=list)
    epoch: int = 0
    generation: int = 0


# ---- control plane ----------------------------------------------------------------------------

@dataclass(slots=True)
class ReadyMsg(Message):
    """child → supervisor: start-up finished (the handshake); ``info`` is what it learned."""

    TYPE: ClassVar[str] = "ready"
    process: str
    pid: int
    info: dict = field(default_factory=dict)
    generation: int = 0


@dataclass(slots=True)
class FatalMsg(Message):
    """child → supervisor: start-up or run failed in a way a restart cannot fix."""

    TYPE: ClassVar[str] = "fatal"
    process: str
    error: str
    usage: bool = False              # a user mistake (model, device, config): restarting won't help
    generation: int = 0


@dataclass(slots=True)
class StatsMsg(Message):
    """child → supervisor, periodically: counters, gauges and latency samples since last time.

    ``latency_ms`` maps a stage name (``decode``, ``preprocess``, ``queue``, ``inference``,
    ``postprocess``, ``end_to_end``) to the samples (milliseconds) gathered since the last
    message; ``counters`` are cumulative totals for this process instance; ``gauges`` are
    instantaneous values (queue depths, free slots, in-flight requests).
    """

    TYPE: ClassVar[str] = "stats"
    process: str
    role: str
    pid: int
    device: str = ""
    counters: dict = field(default_factory=dict)
    gauges: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    generation: int = 0


@dataclass(slots=True)
class AckMsg(Message):
    """postprocessor → supervisor: these frame ids of stream ``stream`` are written to every
    sink; ``finished``: every frame of that stream is written (it has ended)."""

    TYPE: ClassVar[str] = "ack"
    frame_ids: list[int]                                       # written as results
    error_ids: list[int] = field(default_factory=list)         # written as error records
    stream: int = 0
    finished: bool = False
    generation: int = 0


# ---- control plane: commands (supervisor ⇄ stages) -----------------------------------------------
# One message type per command; a stage's :class:`workers.runtime.Stage` dispatches them by type.

@dataclass(slots=True)
class StartMsg(Message):
    """supervisor → every stage: all stages are up, go (a decoder starts reading)."""

    TYPE: ClassVar[str] = "start"
    generation: int = 0


@dataclass(slots=True)
class StopMsg(Message):
    """supervisor → every stage: finish this loop turn, close, exit."""

    TYPE: ClassVar[str] = "stop"
    generation: int = 0


@dataclass(slots=True)
class WorkerDownMsg(Message):
    """supervisor → preprocessor: inference instance ``worker`` (``name@pid``) died; the batches it
    held go back to the queue."""

    TYPE: ClassVar[str] = "worker_down"
    worker: str
    generation: int = 0


@dataclass(slots=True)
class DecoderDownMsg(Message):
    """supervisor → preprocessor: decoder ``decoder`` died; frames of its instances older than
    ``epoch`` are fenced off. Answered by :class:`DecoderFencedMsg`."""

    TYPE: ClassVar[str] = "decoder_down"
    decoder: int
    epoch: int
    generation: int = 0


@dataclass(slots=True)
class DecoderFencedMsg(Message):
    """preprocessor → supervisor: decoder ``decoder``'s waiting frames are dropped and later ones
    will be; ``next_ids`` maps each of its streams (``str(sid)``) to one past the highest frame id
    that passed (where a live stream's successor goes on numbering)."""

    TYPE: ClassVar[str] = "decoder_fenced"
    decoder: int
    next_ids: dict[str, int]
    generation: int = 0


@dataclass(slots=True)
class StreamFields:
    """A stream's place, as a command carries it: the fields of :class:`engine.io.streams.StreamSpec`
    (a stream being added or opened is never ``removed``)."""

    sid: int
    name: str
    uri: str
    live: bool
    decoder: int
    slot_lo: int
    slot_hi: int

    def stream_fields(self) -> dict[str, Any]:
        """The stream's fields by name (``StreamSpec(**msg.stream_fields())``)."""
        return {f.name: getattr(self, f.name) for f in fields(StreamFields)}


@dataclass(slots=True)
class AddStreamMsg(Message, StreamFields):
    """supervisor → preprocessor and postprocessor: a library pipeline added this stream (known
    before its first frame); each answers :class:`StreamAddedMsg`."""

    TYPE: ClassVar[str] = "add_stream"
    generation: int = 0


@dataclass(slots=True)
class StreamAddedMsg(Message):
    """preprocessor or postprocessor → supervisor: it knows stream ``stream`` now."""

    TYPE: ClassVar[str] = "stream_added"
    stream: int
    generation: int = 0


@dataclass(slots=True)
class OpenStreamMsg(Message, StreamFields):
    """supervisor → the stream's decoder, once every stage downstream knows it: read it from
    ``source`` (a ``[[sources]]`` entry, as :meth:`engine.config.SourceConfig.to_dict` gives it).
    A source that cannot be opened is answered by :class:`StreamFailedMsg`."""

    TYPE: ClassVar[str] = "open_stream"
    source: dict
    generation: int = 0


@dataclass(slots=True)
class StreamFailedMsg(Message):
    """decoder → supervisor: stream ``stream`` could not be opened (``error``): it ends there."""

    TYPE: ClassVar[str] = "stream_failed"
    stream: int
    error: str
    generation: int = 0


@dataclass(slots=True)
class CloseStreamMsg(Message):
    """supervisor → decoder: stream ``stream`` was removed; stop reading it and send its end.
    Answered by :class:`StreamClosedMsg` once every raw slot of it is back."""

    TYPE: ClassVar[str] = "close_stream"
    stream: int
    generation: int = 0


@dataclass(slots=True)
class StreamClosedMsg(Message):
    """decoder → supervisor: removed stream ``stream``'s raw-slot range is free again."""

    TYPE: ClassVar[str] = "stream_closed"
    stream: int
    generation: int = 0


@dataclass(slots=True)
class EndStreamMsg(Message):
    """supervisor → postprocessor: removed stream ``stream`` lost its decoder before its end; it
    ends with what was written."""

    TYPE: ClassVar[str] = "end_stream"
    stream: int
    generation: int = 0


# ---- library pipelines (engine/api/pipeline.py) ---------------------------------------------------------

@dataclass(slots=True)
class RecordMsg(Message):
    """postprocessor → API: one written result (:meth:`engine.core.results.FrameResult.to_dict`), in
    its stream's order; ``record`` is empty on the end marker sent after the last one."""

    TYPE: ClassVar[str] = "record"
    record: dict
    end: bool = False


# API ⇄ the supervisor of a library pipeline (engine/protocol/apilink.py): one message type per
# command, answer and report; each end dispatches them by type. The API numbers its requests
# (``request``, counting from 1); the answer to one carries its number.

@dataclass(slots=True)
class StopRunMsg(Message):
    """API → supervisor: stop the run (the pipeline is closed); the outcome follows."""

    TYPE: ClassVar[str] = "stop_run"


@dataclass(slots=True)
class SeenMsg(Message):
    """API → supervisor, every 0.5 s while results come: ``marks`` maps a stream's name to the
    first frame id the iterator has not received (where a restarted postprocessor hands
    results.jsonl over again)."""

    TYPE: ClassVar[str] = "seen"
    marks: dict[str, int]


@dataclass(slots=True)
class DrainedMsg(Message):
    """API → supervisor: the API holds every result of ``streams`` streams (it has their end
    marker); the run may end once that is all of them."""

    TYPE: ClassVar[str] = "drained"
    streams: int


@dataclass(slots=True)
class AddSourceMsg(Message):
    """API → supervisor: request ``request``: open another stream, ``source`` (a ``[[sources]]``
    entry: ``uri`` and the keys the caller gave). Answered by :class:`RequestDoneMsg` (with the
    stream's name) or :class:`RequestRefusedMsg`.

    ``source`` stays a dict: its schema is :class:`engine.config.SourceConfig`, which validates it
    on the supervisor's side (with the config's ``[source]`` defaults merged in, and an error that
    names the key); a copy of that schema here would drift from it (as :class:`OpenStreamMsg`)."""

    TYPE: ClassVar[str] = "add_source"
    request: int
    source: dict


@dataclass(slots=True)
class RemoveSourceMsg(Message):
    """API → supervisor: request ``request``: close stream ``name``. Answered by
    :class:`RequestDoneMsg` or :class:`RequestRefusedMsg`."""

    TYPE: ClassVar[str] = "remove_source"
    request: int
    name: str


@dataclass(slots=True)
class StartedMsg(Message):
    """supervisor → API: every stage is ready; ``streams`` are the names of the run's streams."""

    TYPE: ClassVar[str] = "started"
    streams: list[str]


@dataclass(slots=True)
class SnapshotMsg(Message):
    """supervisor → API, every 0.5 s: the run's figures.

    ``snapshot`` is :meth:`engine.observe.metrics.Snapshot.to_dict`, read back with
    ``Snapshot.from_dict`` (the same dict as ``status.json`` and report.json); that class is the
    schema (a layer above this one), so it is not written out a second time here."""

    TYPE: ClassVar[str] = "snapshot"
    snapshot: dict


@dataclass(slots=True)
class RequestDoneMsg(Message):
    """supervisor → API: request ``request`` (an add or a remove) is done; ``name`` is the stream's."""

    TYPE: ClassVar[str] = "request_done"
    request: int
    name: str


@dataclass(slots=True)
class RequestRefusedMsg(Message):
    """supervisor → API: request ``request`` was refused, for ``error`` (one line: the API raises
    it as a ConfigError)."""

    TYPE: ClassVar[str] = "request_refused"
    request: int
    error: str


@dataclass(slots=True)
class OutcomeMsg(Message):
    """supervisor → API, its last message: how the run ended.

    ``usage``: a mistake found before start (the API raises a ConfigError); ``error``: the name of
    the :class:`engine.core.errors.OvstreamError` class that a pre-flight check raised, if one did.
    ``report`` is report.json's content (:meth:`engine.observe.metrics.Snapshot.to_dict`, with
    ``restarts`` and ``failure``; empty if the run never got going): a dict for the reason given
    at :class:`SnapshotMsg`."""

    TYPE: ClassVar[str] = "outcome"
    exit_code: int
    message: str
    report: dict = field(default_factory=dict)
    usage: bool = False
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The outcome as :attr:`engine.api.pipeline.Pipeline.outcome` shows it (``error`` only when set)."""
        out: dict[str, Any] = {"exit_code": self.exit_code, "message": self.message, "report": self.report,
                               "usage": self.usage}
        if self.error:
            out["error"] = self.error
        return out


def encode_result(msg: ResultMsg, tensors: list) -> list:
    """Multipart frames for a result: the header, then each tensor's buffer (not copied here)."""
    msg.outputs = [[name, str(t.dtype), list(t.shape)] for name, t in tensors]
    return [msg.encode(), *[memoryview(t).cast("B") if t.flags.c_contiguous else t.tobytes()
                            for _, t in tensors]]


def decode_result(parts: list) -> tuple[ResultMsg, dict]:
    """Inverse of :func:`encode_result`: the header and ``{name: ndarray}`` views of the frames."""
    import numpy as np

    msg = decode(parts[0])
    if not isinstance(msg, ResultMsg):
        raise MessageError(f"expected a result, got {msg.TYPE}")
    specs = msg.tensor_specs()
    if len(specs) != len(parts) - 1:
        raise MessageError(f"result announces {len(specs)} tensors, carries {len(parts) - 1}")
    tensors = {}
    for spec, buf in zip(specs, parts[1:]):
        dtype = spec.numpy_dtype()
        expected = dtype.itemsize * math.prod(spec.shape)
        size = len(buf)
        if size != expected or size > MAX_TENSOR_BYTES:
            raise MessageError(f"tensor {spec.name!r}: {size} bytes, expected {expected}")
        tensors[spec.name] = np.frombuffer(buf, dtype=dtype).reshape(spec.shape)
    return msg, tensors


def as_dict(msg: Message) -> dict:
    """Plain-dict view of a message (for logs and tests)."""
    return asdict(msg)  # type: ignore[call-overload]
