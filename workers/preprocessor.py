"""Preprocessor stage: takes raw frames fairly across streams, resizes them into batch slots and
dispatches batches by credit.

Raw frames wait in one FIFO per stream and are taken round-robin (:class:`FairQueue`), so a fast
file stream cannot starve a camera; a batch may hold frames of several streams. Each inference
worker announces one credit per infer request; a batch goes only to a worker holding a credit
(the one holding the most), so a faster device gets more frames and a slow one never builds a
queue. A dispatched batch stays held, pixels intact in its input slot, until the postprocessor
confirms it has the result, which also gives its worker the credit back; if its worker dies
first, the batch goes back to the front of the queue. So a result lost in a dying worker's socket
is never lost.
"""
from __future__ import annotations

import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from engine.config import PreprocessConfig
from engine.core.geometry import Geometry
from engine.io.streams import Layout, StreamSpec
from engine.protocol.channels import make_socket, pending
from engine.protocol.context import StageContext
from engine.protocol.messages import (
    BatchMsg,
    ControlMsg,
    CreditMsg,
    EndOfSource,
    ErrorMsg,
    FrameMsg,
    FrameRef,
    ReleaseMsg,
)
from engine.protocol.shm import FreeList, SlotPool
from workers.runtime import Stage


class FairQueue:
    """Frames waiting for an input slot: one FIFO per stream, taken round-robin one frame at a
    time (deficit round robin with a quantum of one frame). Every stream with a waiting frame
    gets a turn within one round, however many frames another stream has queued; each stream's
    frames leave in their own order."""

    def __init__(self) -> None:
        self._queues: dict[int, deque[FrameRef]] = {}
        self._turns: deque[int] = deque()          # streams with waiting frames, next turn first

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def depth(self, stream: int) -> int:
        return len(self._queues.get(stream, ()))

    def push(self, ref: FrameRef) -> None:
        queue = self._queues.setdefault(ref.stream, deque())
        if not queue:
            self._turns.append(ref.stream)
        queue.append(ref)

    def pop(self) -> FrameRef | None:
        """The next frame in round-robin order across streams, or None when empty."""
        if not self._turns:
            return None
        stream = self._turns.popleft()
        queue = self._queues[stream]
        ref = queue.popleft()
        if queue:
            self._turns.append(stream)
        return ref

    def drop(self, streams: set[int], below_epoch: int) -> int:
        """Forget the waiting frames of ``streams`` read by a decoder instance older than
        ``below_epoch`` (a dead decoder: its slots go to its successor); returns how many."""
        dropped = 0
        for stream in streams:
            queue = self._queues.get(stream)
            if not queue:
                continue
            kept = deque(ref for ref in queue if ref.epoch >= below_epoch)
            dropped += len(queue) - len(kept)
            self._queues[stream] = kept
        self._turns = deque(s for s in self._turns if self._queues[s])
        return dropped


@dataclass
class Batch:
    slot: int
    frames: list[FrameRef] = field(default_factory=list)
    deadline: float = 0.0
    batch_id: int = 0


class Dispatcher:
    """Credit bookkeeping: which worker may take a batch, and which batches are out where."""

    def __init__(self) -> None:
        self.credits: dict[str, int] = {}
        self.held: dict[int, tuple[str, Batch]] = {}      # batch id → (worker instance, batch)
        self.ready: deque[Batch] = deque()
        self._ids = itertools.count(1)

    def on_credit(self, msg: CreditMsg) -> None:
        """A worker instance is up with ``msg.credits`` requests.

        ``msg.worker`` is an instance identity, ``name@pid``: a restarted worker is a new
        instance, and whatever an older instance of the same name held is lost with it.
        """
        name = msg.worker.split("@")[0]
        for old in [w for w in self.credits if w.split("@")[0] == name]:
            self.worker_down(old)
        self.credits[msg.worker] = msg.credits

    def release(self, batch_id: int) -> int | None:
        """The postprocessor holds this dispatch's result: its worker gets the credit back (the
        request went idle before the worker read its next batch); returns the input slot, or None
        if stale."""
        held = self.held.pop(batch_id, None)
        if held is None:
            return None
        worker, batch = held
        if worker in self.credits:          # else: declared down since
            self.credits[worker] += 1
        return batch.slot

    def worker_down(self, worker: str) -> int:
        """Requeue every batch ``worker`` held whose result has not arrived; returns how many."""
        self.credits.pop(worker, None)
        lost = [bid for bid, (w, _) in self.held.items() if w == worker]
        batches = sorted((self.held.pop(bid)[1] for bid in lost), key=lambda b: b.batch_id)   # dispatch order
        self.ready.extendleft(reversed(batches))
        return len(batches)

    def next_assignment(self) -> tuple[str, Batch] | None:
        """The next (worker, batch) to send, or None without a ready batch or a credit."""
        if not self.ready:
            return None
        worker = max(self.credits, key=self.credits.__getitem__, default=None)
        if worker is None or self.credits[worker] <= 0:
            return None
        batch = self.ready.popleft()
        self.credits[worker] -= 1
        batch.batch_id = next(self._ids)
        self.held[batch.batch_id] = (worker, batch)
        return worker, batch


def run(ctx: StageContext, stage: Stage) -> None:
    cfg = ctx.config
    layout = Layout.from_dict(ctx.layout)
    batch_size, in_h, in_w = ctx.input["batch"], ctx.input["height"], ctx.input["width"]
    pre = cfg.model.preprocess
    keep_raw = cfg.output.images or cfg.output.video       # the postprocessor draws on the raw frame
    raw_pool, in_pool = SlotPool(ctx.pools["raw"]), SlotPool(ctx.pools["input"])
    free = FreeList(in_pool.spec.slots)
    frames_in = make_socket(stage.zmq, zmq.PULL, bind=ctx.endpoints["frames"], hwm=10_000)
    dispatch = make_socket(stage.zmq, zmq.ROUTER, bind=ctx.endpoints["dispatch"], hwm=10_000)
    dispatch.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an unroutable batch raises instead of vanishing
    inputs = make_socket(stage.zmq, zmq.PULL, bind=ctx.endpoints["inputs"], hwm=10_000)
    releases = [make_socket(stage.zmq, zmq.PUSH, connect=ctx.endpoints[layout.decoder_name(d)])
                for d in range(layout.decoders)]
    results = make_socket(stage.zmq, zmq.PUSH, connect=ctx.endpoints["results"])
    dispatcher = Dispatcher()
    waiting = FairQueue()
    min_epoch = [0] * layout.decoders          # frames of older (dead) decoder instances are fenced off
    kept_next = {s.sid: 0 for s in layout.streams}   # per stream: one past the highest id taken
    filling: Batch | None = None
    flush_on_empty = False
    timeout_s = cfg.pipeline.batch_timeout_ms / 1000.0

    freed_raw: dict[tuple[int, int], list[int]] = {}     # (decoder, its epoch) → raw slots done this turn

    def send_raw_releases() -> None:
        """One ReleaseMsg per decoder instance for the raw slots resized this loop turn."""
        for (decoder, epoch), slots in freed_raw.items():
            releases[decoder].send(ReleaseMsg(slots, epoch=epoch, generation=ctx.generation).encode())
        freed_raw.clear()

    def on_control(msg: ControlMsg) -> None:
        if msg.command == "worker_down":
            requeued = dispatcher.worker_down(msg.arg)
            stage.count("requeued_batches", requeued)
        elif msg.command == "decoder_down":
            down = json.loads(msg.arg)
            decoder, epoch = int(down["decoder"]), int(down["epoch"])
            streams = {s.sid for s in layout.owned_by(decoder)}
            min_epoch[decoder] = max(min_epoch[decoder], epoch)
            stage.count("fenced_frames", waiting.drop(streams, epoch))
            reply = {"decoder": decoder, "next": {str(sid): kept_next[sid] for sid in streams}}
            stage.send(ControlMsg("decoder_fenced", json.dumps(reply), ctx.generation))
        elif msg.command == "stream_added":          # a library pipeline's new stream: known before
            spec = StreamSpec(**json.loads(msg.arg))   # its decoder sends its first frame
            if spec.sid == len(layout.streams):
                layout.streams.append(spec)
                kept_next[spec.sid] = 0
            stage.send(ControlMsg("stream_added", str(spec.sid), ctx.generation))

    stage.handler = on_control
    stage.before_stats.append(lambda: stage.gauges.update(
        input_slots=free.size, input_free=free.free, ready_batches=len(dispatcher.ready),
        credits=sum(dispatcher.credits.values()), workers=len(dispatcher.credits),
        held_batches=len(dispatcher.held), waiting_frames=len(waiting)))
    stage.declare("frames", "batches", "errors", "requeued_batches", "fenced_frames")
    stage.ready()
    poller = zmq.Poller()
    poller.register(dispatch, zmq.POLLIN)
    poller.register(inputs, zmq.POLLIN)
    poller.register(frames_in, zmq.POLLIN)
    poller.register(stage.control, zmq.POLLIN)   # a stop wakes the loop at once
    try:
        while not stage.stopping:
            stage.tick()
            wait = cfg.pipeline.heartbeat_s
            if filling is not None and filling.frames:
                wait = max(0.0, min(wait, filling.deadline - time.monotonic()))
            if waiting and (filling is not None or free.free > 0):
                wait = 0.0
            events = dict(poller.poll(stage.poll_ms(wait)))
            if dispatch in events:
                for _, data in pending(dispatch, multipart=True):
                    msg = stage.decode(data)
                    if isinstance(msg, CreditMsg):
                        dispatcher.on_credit(msg)
            if inputs in events:
                for data in pending(inputs):
                    msg = stage.decode(data)
                    if isinstance(msg, ReleaseMsg):
                        for batch_id in msg.batch_ids:
                            slot = dispatcher.release(batch_id)
                            if slot is not None:
                                free.release(slot)
            if frames_in in events:      # raw frames are bounded by the raw slots: take them all
                for data in pending(frames_in):
                    msg = stage.decode(data)
                    if isinstance(msg, FrameMsg):
                        ref = msg.frame
                        if not 0 <= ref.stream < len(layout.streams):
                            stage.bad_messages += 1
                        elif ref.epoch < min_epoch[layout.streams[ref.stream].decoder]:
                            stage.count("fenced_frames")       # its slot now belongs to the successor
                        else:
                            waiting.push(ref)
                    elif isinstance(msg, EndOfSource):
                        flush_on_empty = True                  # no more frames of that stream: no waiting
            while waiting and (filling is not None or free.free > 0):
                ref = waiting.pop()
                if filling is None:
                    filling = Batch(free.acquire(), deadline=time.monotonic() + timeout_s)
                kept_next[ref.stream] = max(kept_next[ref.stream], ref.frame_id + 1)
                _preprocess(ref, filling, raw_pool, in_pool, (in_h, in_w), pre,
                            batch_size, stage, results, ctx.generation)
                if not keep_raw:                # otherwise the postprocessor releases it
                    freed_raw.setdefault((layout.streams[ref.stream].decoder, ref.epoch), []).append(ref.raw_slot)
                if len(filling.frames) == batch_size:
                    dispatcher.ready.append(filling)
                    filling = None
            send_raw_releases()
            if flush_on_empty and not waiting:
                flush_on_empty = False
                if filling is not None:
                    filling.deadline = 0.0          # flush the partial batch now
            if filling is not None and time.monotonic() >= filling.deadline:
                if filling.frames:
                    dispatcher.ready.append(filling)
                else:
                    free.release(filling.slot)          # every frame of it failed
                filling = None
            while (assignment := dispatcher.next_assignment()) is not None:
                worker, batch = assignment
                try:
                    dispatch.send_multipart([worker.encode(), BatchMsg(batch.slot, batch.frames, batch.batch_id,
                                                                       ctx.generation).encode()])
                    stage.count("batches")
                except zmq.ZMQError:              # that instance is gone: its batches go back
                    stage.count("requeued_batches", dispatcher.worker_down(worker))
    finally:
        for sock in (frames_in, dispatch, inputs, results, *releases):
            sock.close(0)
        raw_pool.close()
        in_pool.close()


def _preprocess(ref: FrameRef, batch: Batch, raw_pool: SlotPool, in_pool: SlotPool, size: tuple[int, int],
                pre: PreprocessConfig, batch_size: int, stage: Stage, results: zmq.Socket, generation: int) -> None:
    """Resize one raw frame into the next row of ``batch``; a failure becomes an error record."""
    in_h, in_w = size
    t0, c0 = time.monotonic_ns(), time.thread_time_ns()
    try:
        frame = raw_pool.view(ref.raw_slot, (ref.height, ref.width, 3))
        geometry = Geometry.plan(ref.width, ref.height, in_w, in_h, pre.resize, pre.crop)
        rows = in_pool.view(batch.slot, (batch_size, in_h, in_w, 3))
        geometry.resize_into(frame, rows[len(batch.frames)], pre.interpolation)
    except Exception as exc:  # a frame that cannot be resized must not stop the stream
        stage.count("errors")
        results.send(ErrorMsg(ref, "preprocess", f"{type(exc).__name__}: {exc}", generation).encode())
        return
    ref.geometry = geometry.to_list()
    ref.stamps["pre"] = time.monotonic_ns()
    stage.latency.record("preprocess", (ref.stamps["pre"] - t0) / 1e6)
    stage.count("work_cpu_us", (time.thread_time_ns() - c0) // 1000)
    batch.frames.append(ref)
    stage.count("frames")
