"""Inference outputs on the postprocessor's side: the workers' output pools, and each frame's rows.

An inference worker writes a batch's outputs into its own output pool (a memfd it creates, one
slot per input slot: :class:`workers.inference.OutputSlots`) and the result message names the
pool and the slot. :class:`OutputPools` maps each pool read-only at the first result naming it,
after checking that it is what a worker of this run makes (a descriptor of a live process that
is a memfd named after the run and the worker, or the run's pool file) and that it fits its size
limits; a message cannot make the postprocessor open any other file.
"""
from __future__ import annotations

import os
import re

import numpy as np

from engine.protocol.messages import MessageError, ResultMsg
from engine.protocol.shm import MAX_OUTPUT_POOL_BYTES, PAGE_BYTES, SHM_DIR, SHM_PREFIX, PoolSpec, SlotPool

_DESCRIPTOR = re.compile(r"/proc/(\d+)/fd/(\d+)")
_WORKER = re.compile(r"[A-Za-z0-9_.-]+")
MAX_SLOTS = 1 << 16       # far more input slots than any run has


def split_batch_axis(array: np.ndarray, batch: int) -> np.ndarray:
    """One row per frame along axis 0, whatever the graph did with the batch.

    Graphs that hard-code batch 1 in a Reshape return [1, B*N, ...]; SSD DetectionOutput returns
    [1, 1, B*N, 7] rows tagged by image id (padded per frame with id -1, its terminator).
    """
    if batch == 1 or (array.shape[0] == batch and array.ndim != 4):
        return array
    if array.ndim == 4 and array.shape[:2] == (1, 1) and array.shape[3] == 7:
        rows = array[0, 0]
        out = np.full((batch, 1, rows.shape[0], 7), -1, dtype=array.dtype)
        for b in range(batch):
            mine = rows[rows[:, 0] == b]
            out[b, 0, :len(mine)] = mine
            out[b, 0, :len(mine), 0] = 0
        return out
    if array.shape[0] == batch:
        return array
    if array.shape[0] == 1 and array.ndim >= 2 and array.shape[1] % batch == 0:
        return array.reshape(batch, array.shape[1] // batch, *array.shape[2:])
    raise ValueError(f"output of shape {array.shape} cannot be split into batch {batch}")


def owner_gone(path: str) -> bool:
    """Whether the process whose descriptor ``path`` (``/proc/PID/fd/N``) is has exited or is a
    zombie; False for any other path (nothing to tell)."""
    found = _DESCRIPTOR.fullmatch(path)
    if found is None:
        return False
    try:
        with open(f"/proc/{found.group(1)}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


class OutputPools:
    """The inference workers' output pools of run ``run_id``, each mapped at the first result
    that names it; mapping a worker's new pool (it was restarted) drops its older ones."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._pools: dict[str, tuple[str, SlotPool]] = {}     # path → (worker, pool)

    def _check(self, spec: PoolSpec, msg: ResultMsg) -> None:
        """MessageError unless ``spec`` is an output pool of this run's worker ``msg.worker``."""
        if not (0 < spec.slots <= MAX_SLOTS and 0 < spec.slot_bytes
                and spec.slot_bytes * spec.slots <= MAX_OUTPUT_POOL_BYTES + spec.slots * PAGE_BYTES):
            raise MessageError(f"output pool of {spec.slots} × {spec.slot_bytes} bytes refused")
        if not _WORKER.fullmatch(msg.worker):
            raise MessageError(f"bad worker name {msg.worker!r}")
        name = re.compile(re.escape(f"{SHM_PREFIX}{self._run_id}-{msg.worker}-") + r"\d+-outputs")
        descriptor = _DESCRIPTOR.fullmatch(spec.path)
        if descriptor is not None:
            link = os.readlink(spec.path)            # OSError: the worker is gone (see owner_gone)
            if not (link.startswith("/memfd:") and name.fullmatch(link[len("/memfd:"):].removesuffix(" (deleted)"))):
                raise MessageError(f"output pool {spec.path} is not an output pool of this run")
        elif not (os.path.dirname(spec.path) == str(SHM_DIR) and name.fullmatch(os.path.basename(spec.path))):
            raise MessageError(f"output pool outside shared memory: {spec.path}")

    def tensors(self, msg: ResultMsg) -> dict[str, np.ndarray]:
        """Read-only views of the result's tensors in its slot of its worker's pool. Raises
        OSError (the pool cannot be opened), MessageError or ValueError (a pool or a layout that
        is not acceptable or does not fit); a failed open changes nothing."""
        try:
            spec = PoolSpec(str(msg.pool["path"]), int(msg.pool["slot_bytes"]), int(msg.pool["slots"]))
        except (KeyError, TypeError, ValueError):
            raise MessageError(f"bad output pool {msg.pool!r}") from None
        entry = self._pools.get(spec.path)
        if entry is None or entry[1].spec != spec or entry[0] != msg.worker:
            self._check(spec, msg)                    # once per pool: mapped, it stays what it was
            pool = SlotPool(spec, writable=False)
            for path, (worker, old) in list(self._pools.items()):
                if worker == msg.worker or path == spec.path:
                    old.close()
                    del self._pools[path]
            entry = self._pools[spec.path] = (msg.worker, pool)
        specs = msg.tensor_specs()
        for s in specs:
            s.numpy_dtype()                                 # MessageError for a bad one
        arrays = entry[1].tensors(msg.slot, [(s.dtype, s.shape) for s in specs])
        return {s.name: a for s, a in zip(specs, arrays)}

    def close(self) -> None:
        for _, pool in self._pools.values():
            pool.close()
        self._pools.clear()
