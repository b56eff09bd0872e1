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
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from engine.core.geometry import Geometry
from engine.io.streams import Layout, StreamSpec
from engine.protocol.channels import pending
from engine.protocol.context import StageContext
from engine.protocol.messages import (
    AddStreamMsg,
    BatchMsg,
    CreditMsg,
    DecoderDownMsg,
    DecoderFencedMsg,
    EndOfSource,
    ErrorMsg,
    FrameMsg,
    FrameRef,
    ReleaseMsg,
    SkipMsg,
    StreamAddedMsg,
    WorkerDownMsg,
)
from engine.protocol.shm import FreeList, SlotPool
from workers.runtime import Stage, StageLoop


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


class Preprocessor(StageLoop):
    """The preprocessor's loop: raw frames in, resized into batch slots, batches out by credit."""

    def __init__(self, ctx: StageContext, stage: Stage) -> None:
        super().__init__(ctx, stage)
        self.layout = Layout.from_dict(ctx.layout)
        self.batch_size, self.in_h, self.in_w = ctx.input.batch, ctx.input.height, ctx.input.width
        self.pre = self.cfg.model.preprocess
        self.keep_raw = self.cfg.output.annotated    # the postprocessor draws on the raw frame
        self.raw_pool, self.in_pool = SlotPool(ctx.pools["raw"]), SlotPool(ctx.pools["input"])
        self.free = FreeList(self.in_pool.spec.slots)
        self.frames_in = self.socket(zmq.PULL, bind=ctx.endpoints["frames"], hwm=10_000)
        self.dispatch = self.socket(zmq.ROUTER, bind=ctx.endpoints["dispatch"], hwm=10_000)
        self.dispatch.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an unroutable batch raises instead of vanishing
        self.inputs = self.socket(zmq.PULL, bind=ctx.endpoints["inputs"], hwm=10_000)
        self.releases = [self.socket(zmq.PUSH, connect=ctx.endpoints[self.layout.decoder_name(d)])
                         for d in range(self.layout.decoders)]
        self.results = self.socket(zmq.PUSH, connect=ctx.endpoints["results"])
        self.dispatcher = Dispatcher()
        self.waiting = FairQueue()
        self.min_epoch = [0] * self.layout.decoders    # frames of older (dead) decoder instances are fenced off
        self.kept_next = {s.sid: 0 for s in self.layout.streams}   # per stream: one past the highest id taken
        self.detect_every = [src.detect_every for src in self.cfg.streams]   # added streams: every frame
        self.filling: Batch | None = None
        self.flush_on_empty = False
        self.timeout_s = self.cfg.pipeline.batch_timeout_ms / 1000.0
        self.freed_raw: dict[tuple[int, int], list[int]] = {}    # (decoder, its epoch) → raw slots done this turn
        self.watch(self.dispatch, self.on_credits)
        self.watch(self.inputs, self.on_releases)
        self.watch(self.frames_in, self.on_frames)
        self.on_command(WorkerDownMsg, self.on_worker_down)
        self.on_command(DecoderDownMsg, self.on_decoder_down)
        self.on_command(AddStreamMsg, self.on_add_stream)
        stage.declare("frames", "batches", "errors", "requeued_batches", "fenced_frames", "skipped")

    def fill_stats(self) -> None:
        self.stage.gauges.update(
            input_slots=self.free.size, input_free=self.free.free, ready_batches=len(self.dispatcher.ready),
            credits=sum(self.dispatcher.credits.values()), workers=len(self.dispatcher.credits),
            held_batches=len(self.dispatcher.held), waiting_frames=len(self.waiting))

    # ---- commands -------------------------------------------------------------------------------
    def on_worker_down(self, msg: WorkerDownMsg) -> None:
        self.stage.count("requeued_batches", self.dispatcher.worker_down(msg.worker))

    def on_decoder_down(self, msg: DecoderDownMsg) -> None:
        """Fence off the dead decoder's frames (its slots go to its successor) and say where its
        streams stand."""
        streams = {s.sid for s in self.layout.owned_by(msg.decoder)}
        self.min_epoch[msg.decoder] = max(self.min_epoch[msg.decoder], msg.epoch)
        self.stage.count("fenced_frames", self.waiting.drop(streams, msg.epoch))
        next_ids = {str(sid): self.kept_next[sid] for sid in streams}
        self.stage.send(DecoderFencedMsg(msg.decoder, next_ids, self.ctx.generation))

    def on_add_stream(self, msg: AddStreamMsg) -> None:
        """A library pipeline's new stream: known here before its decoder sends its first frame."""
        spec = StreamSpec(**msg.stream_fields())
        if spec.sid == len(self.layout.streams):
            self.layout.streams.append(spec)
            self.kept_next[spec.sid] = 0
        self.stage.send(StreamAddedMsg(spec.sid, self.ctx.generation))

    # ---- inputs ---------------------------------------------------------------------------------
    def on_credits(self) -> None:
        for _, data in pending(self.dispatch, multipart=True):
            msg = self.stage.decode(data)
            if isinstance(msg, CreditMsg):
                self.dispatcher.on_credit(msg)

    def on_releases(self) -> None:
        """The postprocessor holds these dispatches' results: their input slots are free."""
        for data in pending(self.inputs):
            msg = self.stage.decode(data)
            if isinstance(msg, ReleaseMsg):
                for batch_id in msg.batch_ids:
                    slot = self.dispatcher.release(batch_id)
                    if slot is not None:
                        self.free.release(slot)

    def on_frames(self) -> None:
        """Raw frames are bounded by the raw slots: take them all."""
        for data in pending(self.frames_in):
            msg = self.stage.decode(data)
            if isinstance(msg, FrameMsg):
                ref = msg.frame
                if not 0 <= ref.stream < len(self.layout.streams):
                    self.stage.bad_messages += 1
                elif ref.epoch < self.min_epoch[self.layout.streams[ref.stream].decoder]:
                    self.stage.count("fenced_frames")       # its slot now belongs to the successor
                else:
                    self.waiting.push(ref)
            elif isinstance(msg, EndOfSource):
                self.flush_on_empty = True                  # no more frames of that stream: no waiting

    # ---- a turn ---------------------------------------------------------------------------------
    def wait_s(self) -> float:
        """A heartbeat, or until the filling batch's deadline; no wait while frames can be taken."""
        wait = self.cfg.pipeline.heartbeat_s
        if self.filling is not None and self.filling.frames:
            wait = max(0.0, min(wait, self.filling.deadline - time.monotonic()))
        if self.waiting and (self.filling is not None or self.free.free > 0):
            wait = 0.0
        return wait

    def after_poll(self) -> None:
        self._fill()
        self._send_raw_releases()
        filling = self.filling
        if self.flush_on_empty and not self.waiting:
            self.flush_on_empty = False
            if filling is not None:
                filling.deadline = 0.0          # flush the partial batch now
        if filling is not None and time.monotonic() >= filling.deadline:
            if filling.frames:
                self.dispatcher.ready.append(filling)
            else:
                self.free.release(filling.slot)          # every frame of it failed
            self.filling = None
        self._dispatch()

    def _fill(self) -> None:
        """Resize waiting frames into batches while an input slot is there for them (a frame its
        stream's ``detect_every`` skips goes to the postprocessor as it is)."""
        while (self.filling is not None or self.free.free > 0) and (ref := self.waiting.pop()) is not None:
            self.kept_next[ref.stream] = max(self.kept_next[ref.stream], ref.frame_id + 1)
            if not self.keep_raw:                # otherwise the postprocessor releases it
                decoder = self.layout.streams[ref.stream].decoder
                self.freed_raw.setdefault((decoder, ref.epoch), []).append(ref.raw_slot)
            if self._skip(ref):
                continue
            if self.filling is None:
                slot = self.free.acquire()
                assert slot is not None                  # the loop's condition: one is free
                self.filling = Batch(slot, deadline=time.monotonic() + self.timeout_s)
            self._preprocess(ref, self.filling)
            if len(self.filling.frames) == self.batch_size:
                self.dispatcher.ready.append(self.filling)
                self.filling = None

    def _skip(self, ref: FrameRef) -> bool:
        """Whether the detector skips this frame (``detect_every``): then the postprocessor has it now."""
        every = self.detect_every[ref.stream] if ref.stream < len(self.detect_every) else 1
        if every == 1 or ref.frame_id % every == 0:
            return False
        self.results.send(SkipMsg(ref, self.ctx.generation).encode())
        self.stage.count("skipped")
        return True

    def _preprocess(self, ref: FrameRef, batch: Batch) -> None:
        """Resize one raw frame into the next row of ``batch``; a failure becomes an error record."""
        stage, pre = self.stage, self.pre
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        try:
            frame = self.raw_pool.view(ref.raw_slot, (ref.height, ref.width, 3))
            geometry = Geometry.plan(ref.width, ref.height, self.in_w, self.in_h, pre.resize, pre.crop)
            rows = self.in_pool.view(batch.slot, (self.batch_size, self.in_h, self.in_w, 3))
            geometry.resize_into(frame, rows[len(batch.frames)], pre.interpolation, pre.pad)
        except Exception as exc:  # a frame that cannot be resized must not stop the stream
            stage.count("errors")
            error = ErrorMsg(ref, "preprocess", f"{type(exc).__name__}: {exc}", self.ctx.generation)
            self.results.send(error.encode())
            return
        ref.geometry = geometry.to_list()
        ref.stamps["pre"] = time.monotonic_ns()
        stage.latency.record("preprocess", (ref.stamps["pre"] - t0) / 1e6)
        stage.count("work_cpu_us", (time.thread_time_ns() - c0) // 1000)
        batch.frames.append(ref)
        stage.count("frames")

    def _send_raw_releases(self) -> None:
        """One ReleaseMsg per decoder instance for the raw slots resized this loop turn."""
        for (decoder, epoch), slots in self.freed_raw.items():
            self.releases[decoder].send(ReleaseMsg(slots, epoch=epoch, generation=self.ctx.generation).encode())
        self.freed_raw.clear()

    def _dispatch(self) -> None:
        """Every ready batch that a worker has a credit for goes to it."""
        while (assignment := self.dispatcher.next_assignment()) is not None:
            worker, batch = assignment
            msg = BatchMsg(batch.slot, batch.frames, batch.batch_id, self.ctx.generation)
            try:
                self.dispatch.send_multipart([worker.encode(), msg.encode()])
                self.stage.count("batches")
            except zmq.ZMQError:              # that instance is gone: its batches go back
                self.stage.count("requeued_batches", self.dispatcher.worker_down(worker))

    def close(self) -> None:
        super().close()
        self.raw_pool.close()
        self.in_pool.close()


def run(ctx: StageContext, stage: Stage) -> None:
    Preprocessor(ctx, stage).run()
