"""SlotPool: fixed-size slots in one shared-memory file, and the owner's free list.

The supervisor creates the raw and input pools before the stage processes start; each inference
worker creates its own output pool. On Linux a pool is an anonymous ``memfd`` that has no name in
``/dev/shm`` at all: other processes attach through ``/proc/<creator>/fd/<n>``, and the memory is
freed by the kernel when the last process holding it exits, so no crash (not even SIGKILL of the
supervisor) can leak a segment. Elsewhere it is a file in /dev/shm (or the temp dir) that its
creator unlinks at exit (and the supervisor, every file of its run). Stages take numpy views of
slots; pixels are written once into a slot and never copied through a socket.
"""
from __future__ import annotations

import math
import mmap
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
SHM_PREFIX = "ovstream-"
PAGE_BYTES = 4096
TENSOR_ALIGN = 64          # each tensor of a slot starts at a multiple of this (SIMD loads)

MAX_OUTPUT_POOL_BYTES = 1 << 30     # an inference worker's output pool, at most
TensorLayout = list[tuple[str, list[int]]]     # (numpy dtype name, shape) of each tensor, in order


def tensor_offsets(layout: TensorLayout) -> tuple[list[int], int]:
    """Where each tensor of ``layout`` starts in a slot, in order, and the bytes they all take."""
    offsets, end = [], 0
    for dtype, shape in layout:
        offsets.append(end)
        nbytes = np.dtype(dtype).itemsize * math.prod(shape)
        end = (end + nbytes + TENSOR_ALIGN - 1) // TENSOR_ALIGN * TENSOR_ALIGN
    return offsets, end


@dataclass(frozen=True)
class PoolSpec:
    """Where a pool lives and how it is cut: passed to every stage in its context."""

    path: str
    slot_bytes: int
    slots: int

    def to_dict(self) -> dict:
        return {"path": self.path, "slot_bytes": self.slot_bytes, "slots": self.slots}


class SlotPool:
    """A shared-memory file cut into ``slots`` slots of ``slot_bytes`` (page aligned)."""

    def __init__(self, spec: PoolSpec, writable: bool = True) -> None:
        self.spec = spec
        fd = os.open(spec.path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, spec.slot_bytes * spec.slots,
                                  access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._buffer = np.frombuffer(self._map, dtype=np.uint8)

    @staticmethod
    def create(run_id: str, name: str, slot_bytes: int, slots: int) -> PoolSpec:
        """Create the backing memory (its creator keeps it open) and its spec."""
        slot_bytes = (slot_bytes + PAGE_BYTES - 1) // PAGE_BYTES * PAGE_BYTES
        if hasattr(os, "memfd_create") and Path(f"/proc/{os.getpid()}/fd").is_dir():
            fd = os.memfd_create(f"{SHM_PREFIX}{run_id}-{name}", os.MFD_CLOEXEC)
            os.ftruncate(fd, slot_bytes * slots)
            return PoolSpec(f"/proc/{os.getpid()}/fd/{fd}", slot_bytes, slots)
        path = SHM_DIR / f"{SHM_PREFIX}{run_id}-{name}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, slot_bytes * slots)
        finally:
            os.close(fd)
        return PoolSpec(str(path), slot_bytes, slots)

    @staticmethod
    def remove_run(run_id: str) -> None:
        """Remove every pool file of run ``run_id`` that a killed creator left (not for memfds)."""
        for path in SHM_DIR.glob(f"{SHM_PREFIX}{run_id}-*"):
            path.unlink(missing_ok=True)

    @staticmethod
    def unlink(spec: PoolSpec) -> None:
        """Give the memory back: close the owner's memfd, or remove the file. Mappings still
        open elsewhere stay valid until those processes close them or exit."""
        own_fd = f"/proc/{os.getpid()}/fd/"
        try:
            if spec.path.startswith(own_fd):
                os.close(int(spec.path[len(own_fd):]))
            elif not spec.path.startswith("/proc/"):
                os.unlink(spec.path)
        except (FileNotFoundError, OSError):
            pass

    def view(self, slot: int, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> np.ndarray:
        """A writable numpy view of ``slot`` with ``shape`` (must fit in the slot)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.spec.slot_bytes:
            raise ValueError(f"{shape} {dtype} needs {nbytes} bytes, slot holds {self.spec.slot_bytes}")
        start = self._start(slot)
        return self._buffer[start:start + nbytes].view(dtype).reshape(shape)

    def _start(self, slot: int) -> int:
        """Where ``slot`` begins in the pool; IndexError outside it."""
        if not 0 <= slot < self.spec.slots:
            raise IndexError(f"slot {slot} outside pool of {self.spec.slots}")
        return slot * self.spec.slot_bytes

    def tensors(self, slot: int, layout: TensorLayout) -> list[np.ndarray]:
        """Writable views of the tensors of ``layout`` in ``slot`` (see :func:`tensor_offsets`)."""
        offsets, total = tensor_offsets(layout)
        if total > self.spec.slot_bytes:
            raise ValueError(f"tensors of {total} bytes do not fit a slot of {self.spec.slot_bytes}")
        base = self._start(slot)
        return [self._buffer[base + offset:base + offset + np.dtype(dtype).itemsize * math.prod(shape)]
                .view(dtype).reshape(shape) for offset, (dtype, shape) in zip(offsets, layout)]

    def close(self) -> None:
        """Drop this process's mapping (views must not be used afterwards)."""
        self._buffer = None  # type: ignore[assignment]
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with the process


class FreeList:
    """The owner's bookkeeping of which slots are free; consumers release by message."""

    def __init__(self, slots: int) -> None:
        self._free = deque(range(slots))
        self._busy: set[int] = set()
        self.size = slots

    def acquire(self) -> int | None:
        """A free slot, or None when all are in use (the caller applies backpressure)."""
        if not self._free:
            return None
        slot = self._free.popleft()
        self._busy.add(slot)
        return slot

    def release(self, slot: int) -> bool:
        """Return a slot; False for a slot that was not in use (a duplicate release)."""
        if slot not in self._busy:
            return False
        self._busy.remove(slot)
        self._free.append(slot)
        return True

    @property
    def free(self) -> int:
        return len(self._free)


def leftover_segments() -> list[Path]:
    """Segments of ovstream runs still present (for tests and the before-stop check)."""
    return sorted(SHM_DIR.glob(f"{SHM_PREFIX}*"))
