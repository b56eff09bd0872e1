"""Pool sizing and the run's shared memory.

Two slot pools carry a run's pixels: ``raw`` (decoded frames, a range of slots per stream, see
:func:`engine.io.streams.plan`) and ``input`` (batches resized for the model, shared by every
inference worker). Their sizes follow from the config and the model's input; a run whose pools
would take more than half of the memory available is refused in one line before anything is
allocated. :class:`RunSpace` then holds the pools and the run's private directory (socket and
context files) and removes them all on :meth:`~RunSpace.close`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from engine.config import RunConfig
from engine.core.errors import ConfigError
from engine.protocol.channels import RunDir
from engine.protocol.shm import PoolSpec, SlotPool


@dataclass(frozen=True)
class PoolSizes:
    """The two slot pools of a run: bytes per slot and slot counts."""

    raw_bytes: int
    raw_slots: int
    input_bytes: int
    input_slots: int

    @property
    def total(self) -> int:
        return self.raw_bytes * self.raw_slots + self.input_bytes * self.input_slots


def input_slots(cfg: RunConfig) -> int:
    """Slots of the input pool: ``[pipeline] input_slots``, or enough for every request of every
    inference worker plus two (``nireq = 0``: the worker picks, a CPU 2 per stream, so room for 2
    per core)."""
    return cfg.pipeline.input_slots or len(cfg.inference.devices) * (cfg.inference.nireq or
                                                                       max(4, 2 * (os.cpu_count() or 1))) + 2


def slots_per_stream(cfg: RunConfig, batch: int) -> int:
    """Raw slots each stream owns: ``max(3, raw_slots // streams)``; when annotating, raw
    frames are held until drawn, so enough to fill every input slot as well."""
    n = len(cfg.streams)
    per = max(3, cfg.pipeline.raw_slots // n)
    if cfg.output.annotated:
        per = max(per, -(-(input_slots(cfg) * batch + 4) // n))
    return per


def pool_sizes(cfg: RunConfig, raw_slots: int, batch: int, frame_bytes: int) -> PoolSizes:
    """The pools of a run with ``raw_slots`` raw slots (every stream's range and the spare ones)
    and batches of ``batch`` model inputs of ``frame_bytes`` each."""
    return PoolSizes(cfg.pipeline.max_frame_width * cfg.pipeline.max_frame_height * 3, raw_slots,
                     batch * frame_bytes, input_slots(cfg))


def check_memory(sizes: PoolSizes, share: float = 0.5) -> None:
    """Refuse pools larger than ``share`` of the memory available now, in one line."""
    available = psutil.virtual_memory().available
    if sizes.total > share * available:
        gib = 1 << 30
        raise ConfigError(
            f"the frame pools would need {sizes.total / gib:.1f} GiB (raw {sizes.raw_slots} × "
            f"{sizes.raw_bytes / 2**20:.1f} MiB, input {sizes.input_slots} × {sizes.input_bytes / 2**20:.1f} MiB), "
            f"more than half of the {available / gib:.1f} GiB available: lower [inference] batch or nireq, "
            f"[pipeline] input_slots, raw_slots or max_frame_width/height")


class RunSpace:
    """What a run holds outside its processes: a private directory (socket and context files;
    those of dead runs are swept first) and the shared-memory pools, all removed by :meth:`close`
    (also a half-made one, so it is made inside the ``try`` whose ``finally`` closes it)."""

    def __init__(self) -> None:
        RunDir.sweep_stale()
        self.run_dir = RunDir()
        self.pools: dict[str, PoolSpec] = {}

    @property
    def run_id(self) -> str:
        return self.run_dir.run_id

    def allocate(self, sizes: PoolSizes) -> None:
        """Create the ``raw`` and ``input`` pools."""
        self.pools["raw"] = SlotPool.create(self.run_id, "raw", sizes.raw_bytes, sizes.raw_slots)
        self.pools["input"] = SlotPool.create(self.run_id, "input", sizes.input_bytes, sizes.input_slots)

    def close(self) -> None:
        """Unlink the pools, a killed worker's output pool file and the run's directory."""
        for spec in self.pools.values():
            SlotPool.unlink(spec)
        SlotPool.remove_run(self.run_id)
        self.run_dir.remove()
