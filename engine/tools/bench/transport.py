"""Transport micro-benchmark: one hop of uint8 frames from a producer to a consumer process.

Methods (all bounded to :data:`WINDOW` frames in flight, all with the same consumer work):

- ``shm``: the engine's way. The frame sits in a :class:`SlotPool` slot; a msgpack
  :class:`FrameMsg` header naming the slot goes over ZeroMQ ipc PUSH/PULL; the consumer sends a
  :class:`ReleaseMsg` back. The producer wrote the pixels into the slot once (a decoder that
  decodes straight into its slot), so this is the hop alone.
- ``shm+copy``: as ``shm`` but the producer copies a finished frame into the slot for every frame
  (what the decoder stage does today with ``np.copyto``): the hop plus one memcpy.
- ``zmq``: the same header and the pixels inline as a second multipart frame (``copy=False``);
  the consumer's ack is the same release message, used as a credit.
- ``mp_queue``: ``multiprocessing.Queue(maxsize=WINDOW)`` carrying the numpy array (pickled).

The consumer "touches" every frame identically: a checksum of a strided subset that reads at
least one byte of every 4 KiB page (so a method that hands over unmapped memory pays for it).
Throughput is timed on the consumer (CLOCK_MONOTONIC is system-wide), after a warm-up.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import zmq

from engine.protocol.channels import RunDir, make_socket
from engine.protocol.messages import FrameMsg, FrameRef, ReleaseMsg, decode
from engine.protocol.shm import FreeList, PoolSpec, SlotPool

METHODS = ("shm", "shm+copy", "zmq", "mp_queue")
SIZES = {"300x300": (300, 300), "1920x1080": (1080, 1920)}      # name → (height, width)
DEFAULT_FRAMES = {                                               # timed frames: ~0.3-3 s per measurement
    "shm": {"300x300": 3000, "1920x1080": 3000},
    "shm+copy": {"300x300": 3000, "1920x1080": 1000},
    "zmq": {"300x300": 2000, "1920x1080": 300},
    "mp_queue": {"300x300": 1000, "1920x1080": 200},
}
WINDOW = 4                     # frames in flight, for every method
PAGE = 4096
TIMEOUT_S = 60.0


def touch(frame: np.ndarray) -> int:
    """The consumer's work on a frame: a checksum reading at least one byte per 4 KiB page."""
    h, w, c = frame.shape
    step = max(1, PAGE // (2 * c))             # pixels between reads: < half a page apart
    return int(frame[:, ::step, 0].sum(dtype=np.uint64))


def make_frame(height: int, width: int) -> np.ndarray:
    """A deterministic, non-constant test frame."""
    rows = np.arange(height, dtype=np.uint32)[:, None, None]
    cols = np.arange(width, dtype=np.uint32)[None, :, None]
    chans = np.arange(3, dtype=np.uint32)[None, None, :]
    return ((rows * 7 + cols * 3 + chans * 101) % 251).astype(np.uint8)


@dataclass
class TransportResult:
    """One measurement of one method at one frame size."""

    method: str
    size: str
    frames: int                  # timed frames (after warm-up)
    seconds: float
    latency_p50_us: float        # producer send → consumer touched (includes waiting in the window)
    checksum_ok: bool
    shm_path: str = ""           # the segment used (removed when the measurement ends)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def us_per_frame(self) -> float:
        return 1e6 / self.fps if self.fps else float("inf")

    def to_dict(self) -> dict:
        return {"method": self.method, "size": self.size, "frames": self.frames, "seconds": round(self.seconds, 5),
                "fps": round(self.fps, 1), "us_per_frame": round(self.us_per_frame, 2),
                "latency_p50_us": round(self.latency_p50_us, 1), "checksum_ok": self.checksum_ok}


# ---- consumer (child process) -------------------------------------------------------------------

def _consume(method: str, endpoints: dict[str, str], spec: dict | None, queue: Any,
             total: int, warmup: int, report: Connection) -> None:
    """Receive ``total`` frames, touch each, release it; report timings and the checksum sum."""
    ctx = zmq.Context()
    pool: Any = SlotPool(PoolSpec(**spec)) if spec else None      # per method: the pool, sockets or queue
    frames_in: Any = None
    releases: Any = None
    if method != "mp_queue":
        frames_in = make_socket(ctx, zmq.PULL, bind=endpoints["frames"], hwm=WINDOW)
        releases = make_socket(ctx, zmq.PUSH, connect=endpoints["release"], hwm=WINDOW * 4)
    report.send("ready")
    checksum = 0
    latencies: list[int] = []
    t_warm = t_end = 0
    try:
        for i in range(total):
            if method == "mp_queue":
                _, sent, frame = queue.get(timeout=TIMEOUT_S)
                checksum += touch(frame)
            else:
                if not frames_in.poll(int(TIMEOUT_S * 1000)):
                    raise TimeoutError("no frame from the producer")
                if method == "zmq":
                    parts = frames_in.recv_multipart(copy=False)
                    msg: Any = decode(parts[0].buffer)
                    ref = msg.frame
                    frame = np.frombuffer(parts[1].buffer, np.uint8).reshape(ref.height, ref.width, 3)
                    checksum += touch(frame)
                    del frame, parts
                    releases.send(ReleaseMsg([]).encode())
                else:
                    msg = decode(frames_in.recv())
                    ref = msg.frame
                    checksum += touch(pool.view(ref.raw_slot, (ref.height, ref.width, 3)))
                    releases.send(ReleaseMsg([ref.raw_slot]).encode())
                sent = ref.stamps["src"]
            now = time.monotonic_ns()
            latencies.append(now - sent)
            if i == warmup - 1:
                t_warm = now
        t_end = time.monotonic_ns()
        report.send({"checksum": checksum, "t_warm": t_warm, "t_end": t_end,
                     "latency_p50_ns": float(np.median(latencies[warmup:])) if total > warmup else 0.0})
    except Exception as exc:  # the parent turns this into one clear error
        report.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        for sock in (frames_in, releases):
            if sock is not None:
                sock.close(0)
        ctx.term()
        if pool is not None:
            pool.close()


# ---- producer (this process) --------------------------------------------------------------------

def _wait_report(report: Connection, proc: mp.process.BaseProcess, what: str) -> object:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if report.poll(0.1):
            return report.recv()
        if not proc.is_alive():
            raise RuntimeError(f"transport consumer died (exit code {proc.exitcode}) waiting for {what}")
    raise TimeoutError(f"transport consumer gave no {what} in {TIMEOUT_S:.0f} s")


def measure(method: str, size: str, frames: int, warmup: int | None = None) -> TransportResult:
    """Send ``warmup + frames`` frames of ``size`` with ``method``; time the last ``frames``."""
    if method not in METHODS:
        raise ValueError(f"unknown transport method '{method}' (known: {', '.join(METHODS)})")
    height, width = SIZES[size] if size in SIZES else _parse_size(size)
    warmup = max(2, frames // 10) if warmup is None else warmup
    total = warmup + frames
    frame = make_frame(height, width)
    spawn = mp.get_context("spawn")
    run_dir = RunDir()
    spec: PoolSpec | None = None
    pool: SlotPool | None = None
    queue = spawn.Queue(maxsize=WINDOW) if method == "mp_queue" else None
    ctx = zmq.Context()
    out = back = None
    proc = None
    try:
        if method.startswith("shm"):
            spec = SlotPool.create(f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}", "transport", frame.nbytes, WINDOW)
            pool = SlotPool(spec)
            for slot in range(WINDOW):
                np.copyto(pool.view(slot, frame.shape), frame)
        endpoints = {"frames": run_dir.endpoint("frames"), "release": run_dir.endpoint("release")}
        if method != "mp_queue":
            back = make_socket(ctx, zmq.PULL, bind=endpoints["release"], hwm=WINDOW * 4)
        report, child_end = spawn.Pipe(duplex=False)
        proc = spawn.Process(target=_consume, name=f"transport-{method}", daemon=True,
                             args=(method, endpoints, spec.to_dict() if spec else None, queue, total, warmup,
                                   child_end))
        proc.start()
        child_end.close()
        _wait_report(report, proc, "ready")
        if method != "mp_queue":
            out = make_socket(ctx, zmq.PUSH, connect=endpoints["frames"], hwm=WINDOW)
        _produce(method, frame, total, pool, out, back, queue, proc)
        result = _wait_report(report, proc, "its result")
        if not isinstance(result, dict) or "error" in result:
            said = result.get("error") if isinstance(result, dict) else result
            raise RuntimeError(f"transport consumer failed: {said}")
        proc.join(TIMEOUT_S)
        seconds = (result["t_end"] - result["t_warm"]) / 1e9
        return TransportResult(method, size, frames, seconds, result["latency_p50_ns"] / 1000,
                               result["checksum"] == touch(frame) * total, spec.path if spec else "")
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(5)
        for sock in (out, back):
            if sock is not None:
                sock.close(0)
        ctx.term()
        if queue is not None:
            queue.close()
            queue.join_thread()
        if pool is not None:
            pool.close()
        if spec is not None:
            SlotPool.unlink(spec)
        run_dir.remove()


def _produce(method: str, frame: np.ndarray, total: int, pool: Any, out: Any, back: Any, queue: Any,
             proc: mp.process.BaseProcess) -> None:
    """Send ``total`` frames by ``method`` (``pool``/``out``/``back`` or ``queue``, as the method uses)."""
    height, width = frame.shape[:2]
    if method == "mp_queue":
        for i in range(total):
            queue.put((i, time.monotonic_ns(), frame), timeout=TIMEOUT_S)
        return
    free = FreeList(WINDOW)
    credits = WINDOW

    def take_releases(block: bool) -> None:
        nonlocal credits
        if block:
            waited = 0.0
            while not back.poll(100):
                waited += 0.1
                if not proc.is_alive() or waited > TIMEOUT_S:
                    raise RuntimeError(f"transport consumer stopped releasing (exit code {proc.exitcode})")
        while back.poll(0):
            msg = decode(back.recv())
            if isinstance(msg, ReleaseMsg):
                credits += 1
                for slot in msg.slots:
                    free.release(slot)

    for i in range(total):
        if method == "zmq":
            if credits == 0:
                take_releases(block=True)
            credits -= 1
            ref = FrameRef(i, "bench", i, -1, height, width, height, width, stamps={"src": time.monotonic_ns()})
            out.send_multipart([FrameMsg(ref).encode(), frame], copy=False)
            continue
        slot = free.acquire()
        while slot is None:
            take_releases(block=True)
            slot = free.acquire()
        if method == "shm+copy":
            np.copyto(pool.view(slot, frame.shape), frame)
        ref = FrameRef(i, "bench", i, slot, height, width, height, width, stamps={"src": time.monotonic_ns()})
        out.send(FrameMsg(ref).encode())


def _parse_size(size: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"frame size must be WIDTHxHEIGHT, not '{size}'") from None
    return h, w


def run_transport(repeats: int = 3, sizes: tuple[str, ...] = tuple(SIZES), methods: tuple[str, ...] = METHODS,
                  scale: float = 1.0, progress=None) -> list[TransportResult]:
    """Every method at every size, ``repeats`` times, alternating methods within each repeat.

    ``scale`` multiplies the default frame counts (:data:`DEFAULT_FRAMES`; at least 20 frames)."""
    results = []
    for r in range(repeats):
        for size in sizes:
            for method in methods:
                count = max(20, int(DEFAULT_FRAMES.get(method, {}).get(size, 300) * scale))
                if progress:
                    progress(f"transport {method} {size} ×{count} (repeat {r + 1}/{repeats})")
                results.append(measure(method, size, count))
    return results


def summarize(results: list[TransportResult]) -> list[dict]:
    """Median (min–max) frames/s and µs/frame per (size, method), in measurement order."""
    from engine.tools.bench.stats import Spread

    groups: dict[tuple[str, str], list[TransportResult]] = {}
    for r in results:
        groups.setdefault((r.size, r.method), []).append(r)
    rows = []
    for (size, method), items in groups.items():
        spreads = {key: Spread.of(getattr(r, key) for r in items) for key in ("fps", "us_per_frame", "latency_p50_us")}
        rows.append({"size": size, "method": method, "frames": items[0].frames,
                     **{key: s.to_dict() if s else None for key, s in spreads.items()},
                     "checksum_ok": all(r.checksum_ok for r in items)})
    return rows
