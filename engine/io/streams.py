"""The streams of a run and where they live: which decoder process owns each, which raw slots.

The supervisor plans a :class:`Layout` once from the resolved config and hands it to every
stage. A stream is known on the wire by its index (``FrameRef.stream``) and everywhere else by
its unique name. Each stream owns a fixed range of raw slots (so one stream can never hold all
of them); each decoder process owns some streams and so the union of their slot ranges.

A library pipeline may add streams while it runs (:meth:`Layout.add`): the pool then has spare
ranges, and a new stream takes one and the decoder with the fewest open streams. A removed
stream keeps its index and name (:meth:`Layout.remove`); its range goes back to the spare ones
only once its decoder has every slot of it back (:meth:`Layout.release`).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

from engine.config import MAX_STREAMS, RunConfig, SourceConfig
from engine.config.streams import is_live_uri
from engine.core.errors import ConfigError

MIN_SLOTS_PER_STREAM = 3         # one being filled, one being resized, one waiting
MAX_AUTO_DECODERS = 8


@dataclass(frozen=True)
class StreamSpec:
    """One stream: index, name, uri, live or file, owning decoder, raw slots ``[slot_lo, slot_hi)``."""

    sid: int
    name: str
    uri: str
    live: bool
    decoder: int
    slot_lo: int
    slot_hi: int
    removed: bool = False        # taken out of a running pipeline: no decoder opens it again

    @property
    def kind(self) -> str:
        return "live" if self.live else "file"


@dataclass
class Layout:
    """Every stream's place: ``streams[i].sid == i``; decoders are ``decoder-0 .. decoder-(k-1)``."""

    streams: list[StreamSpec] = field(default_factory=list)
    decoders: int = 1
    spare: list[tuple[int, int]] = field(default_factory=list)   # free raw-slot ranges [lo, hi)

    @property
    def raw_slots(self) -> int:
        """Slots of the raw pool: every stream's range and every spare one."""
        return max((hi for _, hi in (*((s.slot_lo, s.slot_hi) for s in self.streams), *self.spare)), default=0)

    def decoder_name(self, index: int) -> str:
        return f"decoder-{index}"

    def owned_by(self, decoder: int) -> list[StreamSpec]:
        return [s for s in self.streams if s.decoder == decoder]

    def open_streams(self, decoder: int) -> list[StreamSpec]:
        """The streams ``decoder`` reads (its streams that were not removed)."""
        return [s for s in self.owned_by(decoder) if not s.removed]

    @property
    def open_count(self) -> int:
        """Streams of every decoder that were not removed."""
        return sum(not s.removed for s in self.streams)

    def add(self, name: str, uri: str, live: bool) -> StreamSpec:
        """A new stream in a spare range, owned by the decoder with the fewest open streams."""
        if not self.spare:
            raise ConfigError(f"no room for another stream: {self.open_count} open, the most this pipeline was started "
                              f"for (Pipeline(max_streams=...))")
        if len(self.streams) >= MAX_STREAMS:
            raise ConfigError(f"a pipeline takes at most {MAX_STREAMS} streams over its life")
        lo, hi = self.spare.pop(0)
        load = [len(self.open_streams(d)) for d in range(self.decoders)]
        spec = StreamSpec(len(self.streams), name, uri, live, load.index(min(load)), lo, hi)
        self.streams.append(spec)
        return spec

    def remove(self, sid: int) -> StreamSpec:
        spec = self.streams[sid] = replace(self.streams[sid], removed=True)
        return spec

    def release(self, sid: int) -> None:
        """A removed stream's slots are all back with its decoder: its range is spare again."""
        spec = self.streams[sid]
        if spec.removed and spec.slot_hi > spec.slot_lo:
            self.spare.append((spec.slot_lo, spec.slot_hi))
            self.streams[sid] = replace(spec, slot_lo=0, slot_hi=0)

    def to_dict(self) -> dict:
        return {"streams": [asdict(s) for s in self.streams], "decoders": self.decoders,
                "spare": [list(r) for r in self.spare]}

    @classmethod
    def from_dict(cls, data: dict) -> Layout:
        return cls([StreamSpec(**s) for s in data.get("streams", [])], int(data.get("decoders", 1)),
                   [(int(lo), int(hi)) for lo, hi in data.get("spare", [])])


def is_live(src: SourceConfig) -> bool:
    """``live = auto`` follows the uri (camera, /dev/video*, URL); yes/no force it."""
    return is_live_uri(src.uri) if src.live == "auto" else src.live == "yes"


def auto_decoders(streams: int, cores: int | None = None) -> int:
    """Decoder processes when ``[pipeline] decoders = 0``: one per 4 cores, at most one per stream
    and at most :data:`MAX_AUTO_DECODERS` (each process costs ~100 MB of imports). A process's
    feeder threads already decode in parallel (OpenCV releases the GIL); more processes only pay
    off where Python's own per-frame work, not the cores, is the limit (README "Many streams")."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(streams, cores // 4, MAX_AUTO_DECODERS))


def plan(cfg: RunConfig, slots_per_stream: int = 0, cores: int | None = None, spare: int = 0) -> Layout:
    """Assign the streams of ``cfg.sources`` to decoders and raw slots.

    Live streams are dealt out first, so with several decoders the cameras spread over them
    before the files do; every stream gets ``slots_per_stream`` raw slots (default
    ``max(3, raw_slots // streams)``), and so does each of ``spare`` ranges for streams added later.
    """
    sources = cfg.streams
    n = len(sources)
    if n > MAX_STREAMS:
        raise ConfigError(f"{n} streams: one run takes at most {MAX_STREAMS}; split them over several runs")
    k = min(cfg.pipeline.decoders or auto_decoders(n, cores), n)
    per = slots_per_stream or max(MIN_SLOTS_PER_STREAM, cfg.pipeline.raw_slots // n)
    live = [is_live(s) for s in sources]
    order = sorted(range(n), key=lambda i: (not live[i], i))
    owner = {sid: rank % k for rank, sid in enumerate(order)}
    streams = [StreamSpec(sid, src.name, src.uri, live[sid], owner[sid], sid * per, (sid + 1) * per)
               for sid, src in enumerate(sources)]
    return Layout(streams, k, [((n + i) * per, (n + i + 1) * per) for i in range(spare)])
