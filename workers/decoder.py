"""Decoder stage: reads the streams this process owns, one reader thread per stream, into raw slots.

Each stream has its own raw slots and its own feeder thread (an unpaced image folder decodes
ahead on a few threads of its own: :class:`engine.io.sources.FolderSource`). A feeder takes one of
its stream's free slots (a file stream waits when none is free, so it never drops; a live
source's reader keeps only the newest frame meanwhile, drop-oldest, counted), takes the next
item from the source, writes the frame into the slot and sends the message on its own sockets
(created by the main thread, used only by the feeder until it ends, then closed by the main
thread). The main thread takes the slots' releases and the supervisor's commands. OpenCV decodes
with the GIL released, so the streams of one process decode in parallel and a camera never waits
behind a file's decode. Frames larger than a slot are shrunk to fit, and unless they are drawn on,
frames larger than the model input are stored at its scale (the preprocessor's resize, done here);
the original size travels with the frame so boxes map back to it.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections import deque
from typing import NamedTuple

import cv2
import numpy as np
import zmq

from engine.config import SourceConfig
from engine.core.errors import OvstreamError
from engine.core.geometry import WHOLE_FRAME_MODES, Geometry
from engine.io.sources import Source, ffmpeg_threads, open_source
from engine.io.streams import Layout, StreamSpec
from engine.observe.metrics import stream_key, stream_state_code
from engine.protocol.channels import make_socket, pending
from engine.protocol.context import StageContext
from engine.protocol.messages import (
    CloseStreamMsg,
    EndOfSource,
    ErrorMsg,
    FrameMsg,
    FrameRef,
    OpenStreamMsg,
    ReleaseMsg,
    StreamClosedMsg,
    StreamFailedMsg,
)
from engine.protocol.shm import SlotPool
from workers.runtime import Stage, StageLoop

log = logging.getLogger(__name__)


class InputScale(NamedTuple):
    """The model input whose scale frames are stored at (see :func:`fit_into_slot`)."""

    width: int
    height: int
    mode: str              # [model.preprocess] resize: letterbox, letterbox_topleft or stretch
    interpolation: str


def fit_into_slot(frame: np.ndarray, max_w: int, max_h: int, dst_pool: SlotPool, slot: int,
                  scale: InputScale | None = None) -> tuple[int, int]:
    """Copy (or shrink) ``frame`` into ``slot``; returns the stored (height, width).

    With ``scale``, a frame larger than the model input is stored as the preprocessor would resize
    it (same plan, same interpolation), which then only copies it into the batch: the same pixels,
    resized in this reader thread once instead of copied whole into shared memory and read whole
    there. The frame's original size travels with it, so boxes map back to it as before."""
    h, w = frame.shape[:2]
    if scale is not None:
        plan = Geometry.plan(w, h, scale.width, scale.height, scale.mode)
        nw, nh = plan.placed_size()
        if nw <= min(w, max_w) and nh <= min(h, max_h) and (nw, nh) != (w, h):
            plan.shrink(frame, dst_pool.view(slot, (nh, nw, 3)), scale.interpolation)
            return nh, nw
    scale_down = min(1.0, max_w / w, max_h / h)
    if scale_down < 1.0:
        nw, nh = max(1, int(w * scale_down)), max(1, int(h * scale_down))
        cv2.resize(frame, (nw, nh), dst=dst_pool.view(slot, (nh, nw, 3)), interpolation=cv2.INTER_AREA)
        return nh, nw
    np.copyto(dst_pool.view(slot, (h, w, 3)), frame)
    return h, w


class SlotBudget:
    """One stream's raw slots ``[lo, hi)``: a thread-safe free list its feeder waits on."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self._free = deque(range(lo, hi))
        self._cond = threading.Condition()

    @property
    def free(self) -> int:
        return len(self._free)

    def owns(self, slot: int) -> bool:
        return self.lo <= slot < self.hi

    def acquire(self, stop: threading.Event, poll_s: float = 0.1) -> int | None:
        """A free slot, waiting for one; None once ``stop`` is set."""
        with self._cond:
            while not self._free:
                if stop.is_set():
                    return None
                self._cond.wait(poll_s)
            return None if stop.is_set() else self._free.popleft()

    def release(self, slot: int) -> bool:
        """Give ``slot`` back; False (ignored) if it is not this stream's or already free."""
        with self._cond:
            if not self.owns(slot) or slot in self._free:
                return False
            self._free.append(slot)
            self._cond.notify()
            return True


class Feeder:
    """One stream's reader thread: slot, item, pixels into the slot, message onto its socket."""

    def __init__(self, spec: StreamSpec, src_cfg: SourceConfig, ctx: StageContext, pool: SlotPool,
                 sockets: dict[str, zmq.Socket], min_side: int, threads: int = 0,
                 scale: InputScale | None = None) -> None:
        self.spec = spec
        self.cfg = src_cfg
        self.ctx = ctx
        self.pool = pool
        # "frames" → the preprocessor, "results" → the postprocessor; None once closed
        self.sockets: dict[str, zmq.Socket] | None = sockets
        self._sending = threading.Lock()      # a send and the main thread's close never overlap
        self.done = ctx.completed_ids(spec.sid)
        self.source: Source = open_source(src_cfg, skip=self.done.__contains__ if self.done else None,
                                          min_side=min_side, threads=threads)
        self.budget = SlotBudget(spec.slot_lo, spec.slot_hi)
        self.scale = scale          # frames are stored at the model input's scale (None: as decoded)
        self.stop = threading.Event()
        self.closing = False        # removed from a running pipeline: ends with an EndOfSource
        resume = self.done.end()
        # a restarted live stream goes on counting after the last frame that got through
        self.next_id = max(resume, int(ctx.resume.get(str(spec.sid), 0))) if self.source.live else resume
        self.read = self.emitted = self.decode_errors = self.reconnects = 0
        self.work_ns = 0          # CPU time of this thread reading and decoding (the bench's profile)
        self.decode_ms: deque[float] = deque(maxlen=1024)   # samples for the main thread's stats
        self.state = "starting"
        self.thread = threading.Thread(target=self._run, name=f"feeder-{spec.name}", daemon=True)

    def _pace_interval(self) -> float:
        """``max_fps`` limits how often this stream takes a frame; a realtime source paces its
        own reading instead (so a live one drops what it produced while nobody took it)."""
        return 1.0 / self.cfg.max_fps if self.cfg.max_fps > 0 and not self.cfg.realtime else 0.0

    def _post(self, *parts: tuple[str, bytes]) -> None:
        """Send on this feeder's sockets; nothing once they are closed (the stage is stopping).
        Sends never block: the raw slots bound what is queued far below the high-water mark."""
        with self._sending:
            if self.sockets is None:
                return
            for edge, data in parts:
                self.sockets[edge].send(data)

    def close_sockets(self, linger_ms: int = 0) -> None:
        """Close the sockets (``linger_ms`` for what was sent last, a stream's end), even under a
        thread still stuck in a read: it finds them closed and sends nothing."""
        with self._sending:
            sockets, self.sockets = self.sockets, None
        for sock in (sockets or {}).values():
            sock.close(linger_ms)

    def _run(self) -> None:
        interval, due = self._pace_interval(), time.monotonic()
        items = iter(self.source)
        stopped = False
        try:
            while True:
                slot = self.budget.acquire(self.stop)
                if slot is None:
                    stopped = True
                    break
                if interval:
                    if self.stop.wait(max(0.0, due - time.monotonic())):
                        stopped = True
                        break
                    due = max(due + interval, time.monotonic())
                t0, c0 = time.monotonic_ns(), time.thread_time_ns()
                item = next(items, None)
                self.work_ns += time.thread_time_ns() - c0 + (item.cpu_ns if item is not None else 0)
                if item is None:
                    self.budget.release(slot)
                    stopped = self.stop.is_set()
                    break
                self._emit(item, slot, t0)
        except Exception:  # a reader bug: into the log; the stream ends as failed, the others go on
            log.error("stream %s failed:\n%s", self.spec.name, traceback.format_exc())
            self.source.failed = self.source.failed or "reader failed (see the decoder log)"
        self.state = "failed" if self.source.failed else "ended"
        if not stopped or self.closing:
            eos = EndOfSource(self.next_id, self.source.drops, self.spec.sid, self.ctx.generation).encode()
            self._post(("frames", eos), ("results", eos))

    def _emit(self, item, slot: int, t0: int) -> None:
        t0 = item.t_ns or t0        # a live frame waited in its source's buffer: its own time counts
        self.read += 1
        # a file frame's id is its position in the source; a live stream numbers the frames it
        # emits, so frames dropped under backpressure leave no gap for its reorder buffer to wait on
        frame_id = self.next_id if self.source.live else item.index
        self.next_id = max(self.next_id, frame_id + 1)
        ref = FrameRef(frame_id, item.locator, item.frame_index, stamps={"src": t0}, stream=self.spec.sid,
                       epoch=self.ctx.epoch)
        if item.frame is None:
            self.budget.release(slot)
            self.decode_errors += 1
            self._post(("results", ErrorMsg(ref, "decode", item.error or "unreadable frame",
                                            self.ctx.generation).encode()))
            return
        self.state = "live" if self.source.live else "running"
        ref.orig_height, ref.orig_width = item.frame.shape[:2]
        if item.original_size is not None:       # decoded at a reduced size
            ref.orig_width, ref.orig_height = item.original_size
        pipeline = self.ctx.config.pipeline
        ref.height, ref.width = fit_into_slot(item.frame, pipeline.max_frame_width, pipeline.max_frame_height,
                                              self.pool, slot, self.scale)
        ref.raw_slot = slot
        ref.stamps["dec"] = time.monotonic_ns()
        self.decode_ms.append((ref.stamps["dec"] - t0) / 1e6)
        self.emitted += 1
        self._post(("frames", FrameMsg(ref, self.ctx.generation).encode()))

    def note_events(self) -> None:
        """Log and count the source's notices (reconnect attempts) as they happen; the main
        thread calls this every turn, as a live reader may reconnect while no frame arrives."""
        for event in self.source.drain_events():
            self.reconnects += 1
            log.warning("%s: %s", self.spec.name, event)

    def current_state(self) -> str:
        if self.state in ("ended", "failed"):
            return self.state
        return "reconnecting" if self.source.reconnecting else self.state

    def cancel(self) -> None:
        """Stop the feeder and its source's reader (returns at once)."""
        self.stop.set()
        self.source.cancel()

    def close_stream(self) -> None:
        """End the stream here (it was removed): what was read goes on downstream, then its end."""
        self.closing = True
        self.cancel()

    @property
    def closed(self) -> bool:
        """Removed, its thread done and every one of its raw slots back: its range is free."""
        return self.closing and not self.thread.is_alive() and self.budget.free == self.budget.hi - self.budget.lo


class Decoder(StageLoop):
    """A decoder's loop: its feeders read; the loop takes the raw slots' releases and the
    supervisor's stream commands, and retires removed streams."""

    def __init__(self, ctx: StageContext, stage: Stage) -> None:
        super().__init__(ctx, stage)
        cfg = self.cfg
        self.layout = Layout.from_dict(ctx.layout)
        self.pool = SlotPool(ctx.pools["raw"])
        self.releases = self.socket(zmq.PULL, bind=ctx.endpoints[ctx.name])
        reducing = cfg.pipeline.reduced_decode and not cfg.output.annotated   # annotated frames keep full resolution
        min_side = max(ctx.input.height, ctx.input.width) if reducing else 0
        if cfg.model.preprocess.resize == "crop":                # the input sees only the centre crop fraction
            min_side = math.ceil(min_side / cfg.model.preprocess.crop)
        self.min_side = min_side
        pre = cfg.model.preprocess
        self.scale = (InputScale(ctx.input.width, ctx.input.height, pre.resize, pre.interpolation)
                      if reducing and pre.resize in WHOLE_FRAME_MODES else None)
        self.index = int(ctx.name.rsplit("-", 1)[-1])      # decoder-<index>
        self.feeders: list[Feeder] = []
        self.retired: dict[str, int] = {}         # the counts of removed streams' feeders
        self.watch(self.releases, self.on_releases)
        self.on_command(OpenStreamMsg, self.on_open_stream)
        self.on_command(CloseStreamMsg, self.on_close_stream)

    def open_feeder(self, spec: StreamSpec, src: SourceConfig) -> Feeder:
        # the pipeline's streams at start (every decoder's share of the cores), or those read here now and this one
        decoding = max(self.layout.open_count, 1 + sum(not f.closing for f in self.feeders))
        threads = ffmpeg_threads(self.cfg.pipeline.decode_threads, decoding)
        sockets = {edge: make_socket(self.stage.zmq, zmq.PUSH, connect=self.ctx.endpoints[edge], hwm=10_000)
                   for edge in ("frames", "results")}
        try:
            feeder = Feeder(spec, src, self.ctx, self.pool, sockets, self.min_side, threads, self.scale)
        except BaseException:
            for sock in sockets.values():
                sock.close(0)
            raise
        self.feeders.append(feeder)
        return feeder

    def start(self) -> None:
        """Open this decoder's streams, say ready, and start reading once every stage is up."""
        for spec in self.layout.open_streams(self.index):
            self.open_feeder(spec, self.cfg.sources[spec.sid])
        self.stage.declare("frames_read", "frames_emitted", "decode_errors", "drops", "reconnects", "stale_releases")
        self.stage.ready(live=any(f.source.live for f in self.feeders), streams=[f.spec.name for f in self.feeders])
        self.stage.wait_for_start()
        for feeder in self.feeders:
            feeder.thread.start()

    # ---- commands: a library pipeline adds a stream to this decoder or removes one of its streams ----
    def on_open_stream(self, msg: OpenStreamMsg) -> None:
        spec = StreamSpec(**msg.stream_fields())
        try:
            src = SourceConfig.model_validate(msg.source)
            if not any(f.spec.sid == spec.sid for f in self.feeders):
                self.open_feeder(spec, src).thread.start()
        except OvstreamError as exc:   # gone since the supervisor checked it: it ends here
            log.error("cannot open stream %s: %s", spec.name, exc)
            self.stage.send(StreamFailedMsg(spec.sid, str(exc), self.ctx.generation))
        except (ValueError, KeyError, TypeError) as exc:   # a malformed command: counted, never fatal
            self.stage.bad_messages += 1
            log.warning("bad %s command: %s", msg.TYPE, exc)

    def on_close_stream(self, msg: CloseStreamMsg) -> None:
        for feeder in self.feeders:
            if feeder.spec.sid == msg.stream and not feeder.closing:
                feeder.close_stream()

    # ---- a turn ---------------------------------------------------------------------------------
    def on_releases(self) -> None:
        for data in pending(self.releases):
            msg = self.stage.decode(data)
            if not isinstance(msg, ReleaseMsg):
                continue
            if msg.epoch != self.ctx.epoch:      # for an earlier instance of this decoder: not ours
                self.stage.count("stale_releases")
                continue
            for slot in msg.slots:
                any(f.budget.release(slot) for f in self.feeders if f.budget.owns(slot))

    def after_poll(self) -> None:
        for feeder in self.feeders:
            feeder.note_events()
        closed = [f for f in self.feeders if f.closed]       # removed streams whose ranges are free
        if closed:
            self.fill_stats()                                # their last figures, per stream
        for feeder in closed:
            self._retire(feeder)

    def _retire(self, feeder: Feeder) -> None:
        """A removed stream's feeder is done: closed, its counts kept in the totals, its range free."""
        feeder.source.close()
        feeder.close_sockets(linger_ms=1000)       # its end of stream may still be on its way
        self.feeders.remove(feeder)
        for name, value in _stream_counters(feeder).items():     # its counts stay in the totals
            self.retired[name] = self.retired.get(name, 0) + value
        self.retired["work_ns"] = self.retired.get("work_ns", 0) + feeder.work_ns
        self.stage.send(StreamClosedMsg(feeder.spec.sid, self.ctx.generation))

    def fill_stats(self) -> None:
        """Per-stream counters and gauges (``name@stream``) and their totals for this process (with
        those of the removed streams), before every heartbeat's stats."""
        stage, retired = self.stage, self.retired
        totals = {name: retired.get(name, 0)
                  for name in ("frames_read", "frames_emitted", "decode_errors", "drops", "reconnects")}
        free = slots = 0
        for f in self.feeders:
            f.note_events()
            while f.decode_ms:
                stage.latency.record("decode", f.decode_ms.popleft())
            sid = f.spec.sid
            for name, value in _stream_counters(f).items():
                stage.counters[stream_key(name, sid)] = value
                totals[name] += value
            stage.gauges[stream_key("next_frame_id", sid)] = f.next_id
            stage.gauges[stream_key("state", sid)] = stream_state_code(f.current_state())
            stage.gauges[stream_key("expected", sid)] = f.source.expected
            free += f.budget.free
            slots += f.budget.hi - f.budget.lo
        stage.counters.update(totals)
        stage.counters["work_cpu_us"] = (retired.get("work_ns", 0) + sum(f.work_ns for f in self.feeders)) // 1000
        stage.gauges.update(raw_slots=slots, raw_free=free)

    def close(self) -> None:
        self.fill_stats()                   # the figures as the run left them (a stopped camera stays live),
        self.stage.before_stats.clear()     # not as cancelling the readers leaves them
        for feeder in self.feeders:         # all at once, then one shared second to finish
            feeder.cancel()
        deadline = time.monotonic() + 1.0
        for feeder in self.feeders:
            if feeder.thread.is_alive():
                feeder.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for feeder in self.feeders:
            if not feeder.thread.is_alive():
                feeder.source.close()       # releases the file or device (a live reader: its own thread)
        for feeder in self.feeders:
            feeder.close_sockets()
        super().close()
        self.pool.close()


def run(ctx: StageContext, stage: Stage) -> None:
    Decoder(ctx, stage).run()


def _stream_counters(f: Feeder) -> dict[str, int]:
    return {"frames_read": f.read, "frames_emitted": f.emitted, "decode_errors": f.decode_errors,
            "drops": f.source.drops, "reconnects": f.reconnects}
