"""Postprocessor stage: decodes outputs with the model's adapter and writes sinks in frame order.

Results arrive from any worker in any order, frames of many streams mixed; one reorder buffer
per stream releases them by frame id, so each stream's results come out in that stream's order
and a stalled stream holds up no other. Frame ids already written (after a restart, or a batch
that a dead worker had finished) are counted as duplicates and not written twice. Each written
id is acknowledged to the supervisor, per stream, which keeps the ledgers used to resume.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import zmq

from engine.analytics.streams import Tracking
from engine.core.errors import OutputError
from engine.core.geometry import Geometry
from engine.core.results import STATUS_ERROR, Event, FrameResult, read_events, read_results
from engine.io.events import EventSink
from engine.io.sinks import ApiSink, Shape, Sink, open_sinks
from engine.io.streams import Layout, StreamSpec
from engine.io.view import ViewSink
from engine.model.adapters import Adapter, create_adapter
from engine.observe.metrics import analytics_key, stream_key
from engine.protocol.channels import pending
from engine.protocol.context import ModelInput, StageContext
from engine.protocol.ledger import FrameLedger
from engine.protocol.messages import (
    AckMsg,
    AddStreamMsg,
    EndOfSource,
    EndStreamMsg,
    ErrorMsg,
    FrameRef,
    Message,
    MessageError,
    ReleaseMsg,
    ResultMsg,
    SkipMsg,
    StreamAddedMsg,
    decode_result,
)
from engine.protocol.output_pools import OutputPools, owner_gone, split_batch_axis
from engine.protocol.shm import SlotPool
from workers.runtime import Source, Stage, StageLoop

log = logging.getLogger(__name__)

LIVE_GAP_S = 2.0   # a live source's missing frame is given up after this long
ACK_INTERVAL_S = 0.1    # written frame ids go to the supervisor at most this often (a stream's end: at once),
                        # when results.jsonl keeps them for a restart to read back; else after every flush


def stage_latencies(stamps: dict[str, int]) -> dict[str, float]:
    """Per-stage milliseconds from the timestamps each stage added."""
    pairs = {"decode": ("src", "dec"), "preprocess": ("dec", "pre"), "queue": ("pre", "inf0"),
             "inference": ("inf0", "inf1"), "postprocess": ("inf1", "post"), "end_to_end": ("src", "post")}
    return {name: round((stamps[b] - stamps[a]) / 1e6, 3) for name, (a, b) in pairs.items()
            if a in stamps and b in stamps}


def frame_geometry(ref: FrameRef, input_w: int, input_h: int) -> Geometry:
    """Model input → original frame pixels for this frame."""
    geometry = Geometry.from_list(ref.geometry, ref.width, ref.height, input_w, input_h)
    if (ref.orig_width, ref.orig_height) != (ref.width, ref.height) and ref.orig_width > 0:
        geometry = geometry.scaled_to(ref.orig_width, ref.orig_height)
    return geometry


def failed_record(ref: FrameRef, stream: str, stage: str, error: str) -> FrameResult:
    return FrameResult.failed(stream, ref.frame_id, ref.source, ref.index, stage, error)


def drawable(record: FrameResult, ref: FrameRef) -> FrameResult:
    """The result with boxes scaled to the stored frame (smaller than the original if shrunk)."""
    if not ref.orig_width or (ref.orig_width, ref.orig_height) == (ref.width, ref.height):
        return record
    return record.scaled(ref.width / ref.orig_width, ref.height / ref.orig_height)


class Reorder:
    """One stream's finished frames, held until every lower frame id of the stream is written."""

    def __init__(self, done: FrameLedger) -> None:
        self.done = done
        self.pending: dict[int, tuple[FrameResult, FrameRef, float]] = {}
        self.next_id = 0
        self.total: int | None = None
        self._skip_done()

    def _skip_done(self) -> None:
        self.next_id = max(self.next_id, self.done.low)       # [0, low) is written: one step
        while self.next_id in self.done:
            self.next_id += 1

    def add(self, record: FrameResult, ref: FrameRef) -> bool:
        """Queue a record; False if its id was already written (a duplicate)."""
        fid = ref.frame_id
        if fid < self.next_id or fid in self.done or fid in self.pending:
            return False
        self.pending[fid] = (record, ref, time.monotonic())
        return True

    def pop_ready(self, live: bool) -> list[tuple[FrameResult, FrameRef]]:
        """Records that can be written now, in frame order."""
        out: list[tuple[FrameResult, FrameRef]] = []
        while True:
            self._skip_done()
            item = self.pending.pop(self.next_id, None)
            if item is None:
                if live and self.pending and time.monotonic() - min(t for *_, t in self.pending.values()) > LIVE_GAP_S:
                    self.next_id += 1      # a live frame lost with a crashed stage: give up on it
                    continue
                return out
            out.append(item[:2])
            self.next_id += 1

    @property
    def finished(self) -> bool:
        return self.total is not None and self.next_id >= self.total and not self.pending


class StreamOutputs:
    """Per stream: the reorder buffer, whether it is live, its acks waiting to be sent, and
    whether its end was announced."""

    def __init__(self, ctx: StageContext, layout: Layout) -> None:
        self.names = [s.name for s in layout.streams]
        self.live = [s.live for s in layout.streams]
        self.reorder = [Reorder(ctx.completed_ids(s.sid)) for s in layout.streams]
        self.to_ack: list[list[int]] = [[] for _ in layout.streams]          # flushed ids the supervisor lacks
        self.to_ack_errors: list[list[int]] = [[] for _ in layout.streams]
        self.finished = [False] * len(layout.streams)
        for spec in layout.streams:
            if spec.removed:                # removed before this instance: nothing more comes
                self.drop(spec.sid)

    def valid(self, stream: int) -> bool:
        return 0 <= stream < len(self.names)

    def add(self, spec: StreamSpec) -> None:
        """A stream a library pipeline added while it runs."""
        self.names.append(spec.name)
        self.live.append(spec.live)
        self.reorder.append(Reorder(FrameLedger()))
        self.to_ack.append([])
        self.to_ack_errors.append([])
        self.finished.append(False)

    def drop(self, stream: int) -> None:
        """End a stream that lost its frames with a crashed decoder after it was removed."""
        reorder = self.reorder[stream]
        reorder.pending.clear()
        reorder.total = 0


class Postprocessor(StageLoop):
    """The postprocessor's loop: results from any worker in, records out to the sinks in each
    stream's order, the written ids acked to the supervisor."""

    def __init__(self, ctx: StageContext, stage: Stage) -> None:
        super().__init__(ctx, stage)
        cfg = self.cfg
        self.layout = layout = Layout.from_dict(ctx.layout)
        keep_raw = cfg.output.annotated
        self.adapter = create_adapter(cfg.model)
        self.raw_pool = SlotPool(ctx.pools["raw"]) if keep_raw else None
        self.results = self.socket(zmq.PULL, bind=ctx.endpoints["results"], hwm=10_000)
        self.releases = [self.socket(zmq.PUSH, connect=ctx.endpoints[layout.decoder_name(d)])
                         for d in range(layout.decoders)] if keep_raw else []
        self.inputs = self.socket(zmq.PUSH, connect=ctx.endpoints["inputs"])
        events = cfg.tracking.enabled and cfg.tracking.events
        shapes: list[Shape] = [*cfg.tracking.lines, *cfg.tracking.zones] if cfg.tracking.enabled else []
        out_dir = Path(cfg.output.dir)
        with output_errors(cfg.output.dir):
            known = EventSink.recover(out_dir / "events.jsonl") if events and ctx.generation > 0 else set()
            self.sinks = open_sinks(cfg.output, resume=ctx.generation > 0, streams=[s.name for s in layout.streams],
                                    events=events, shapes=shapes)
        self.outlet = ApiSink(ctx.endpoints["api"]) if "api" in ctx.endpoints else None   # a library pipeline
        untracked = [s.name for s in cfg.streams if not s.track]
        own = {s.name: cfg.tracking_of(s) for s in cfg.streams if s.tracker}
        self.tracking = Tracking(cfg.tracking, untracked, own) if cfg.tracking.enabled else None
        if self.tracking is not None and ctx.generation > 0:     # the tracks as the previous one left them
            with output_errors(cfg.output.dir):
                rebuild_tracks(self.tracking, out_dir / "results.jsonl", known,
                               [s for s in self.sinks if isinstance(s, EventSink)])
        if "view" in ctx.endpoints and cfg.output.view_fps:            # ovstream serve's live view
            self.sinks.append(ViewSink(ctx.endpoints["view"], cfg.output.view_fps, shapes=shapes))
        if ctx.generation > 0 and cfg.output.jsonl:     # what the previous postprocessor held undelivered
            replay(out_dir / "results.jsonl", ctx.replay_from, [s for s in self.sinks if s.replays])
            if events:
                replay_events(out_dir / "events.jsonl", ctx.replay_from, [s for s in self.sinks if s.replays])
            if self.outlet is not None:                 # the iterator drops what it already has
                replay(Path(cfg.output.dir) / "results.jsonl", ctx.api_from, [self.outlet])
        self.streams = StreamOutputs(ctx, layout)
        self.output_pools = OutputPools(ctx.run_id)
        self.ack_due = 0.0
        self.ack_interval = ACK_INTERVAL_S if cfg.output.jsonl else 0.0   # without the file, a restart relies on acks
        self.watch(self.results, self.on_results)
        self.on_command(AddStreamMsg, self.on_add_stream)
        self.on_command(EndStreamMsg, self.on_end_stream)
        stage.declare("results", "errors", "duplicates")
        for sid in range(len(self.streams.names)):
            stage.declare(*(stream_key(name, sid) for name in ("results", "errors", "duplicates")))

    # ---- commands: a library pipeline adds a stream (known here before its first frame) or ends one ----
    def on_add_stream(self, msg: AddStreamMsg) -> None:
        spec = StreamSpec(**msg.stream_fields())
        if spec.sid == len(self.streams.names):
            self.streams.add(spec)
            if spec.sid == len(self.layout.streams):      # its decoder: where its raw slots go back
                self.layout.streams.append(spec)
            self.stage.declare(*(stream_key(name, spec.sid) for name in ("results", "errors", "duplicates")))
            if self.outlet is not None:
                self.outlet.reopen()
        self.stage.send(StreamAddedMsg(spec.sid, self.ctx.generation))

    def on_end_stream(self, msg: EndStreamMsg) -> None:
        if self.streams.valid(msg.stream):
            self.streams.drop(msg.stream)

    # ---- a turn ---------------------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> dict[Source, int]:
        if self.outlet is not None and self.outlet.backlogged:     # the consumer is behind: let it catch up
            time.sleep(0.005)
            self.outlet.poll()
            return {}
        return super().poll(timeout_ms)

    def wait_s(self) -> float:
        return _wait_s(self.cfg.pipeline.heartbeat_s, self.streams, self.ack_due)

    def on_results(self) -> None:
        held: list[ResultMsg] = []           # results now here: their input slots may be reused
        for parts in pending(self.results, multipart=True, copy=False):
            msg = self._handle(parts)
            if msg is not None:
                held.append(msg)
        if held:
            self.inputs.send(ReleaseMsg([m.slot for m in held], [m.batch_id for m in held],
                                        generation=self.ctx.generation).encode())

    def after_poll(self) -> None:
        streams, stage, outlet = self.streams, self.stage, self.outlet
        wrote = self._write_ready()
        if wrote:
            self._flush(wrote)
        ended = [sid for sid, r in enumerate(streams.reorder) if r.finished and not streams.finished[sid]]
        if ended or time.monotonic() >= self.ack_due:
            _send_acks(stage, streams, self.ctx.generation)
            self.ack_due = time.monotonic() + self.ack_interval
        for sid in ended:
            streams.finished[sid] = True
        _poll_sinks(self.sinks, stage)
        if self.tracking is not None and wrote:
            index = {name: i for i, name in enumerate(streams.names)}
            stage.gauges.update({analytics_key(kind, where, direction, label, index[name]): value
                                 for name, rows in self.tracking.counts().items() if name in index
                                 for kind, where, direction, label, value in rows})
        if outlet is not None:
            if all(streams.finished):
                outlet.close(len(streams.names))   # the end marker (once), after the last record
            outlet.poll()
            stage.gauges["api_pending"] = outlet.pending
        if all(streams.finished) and self.sinks and outlet is None:   # the run ends on the last "finished"
            self._close_sinks()
        for sid in ended:
            stage.send(AckMsg([], [], sid, finished=True, generation=self.ctx.generation))
        stage.gauges["reorder"] = sum(len(r.pending) for r in streams.reorder)

    def _write_ready(self) -> dict[int, tuple[list[int], list[int]]]:
        """Every record next in its stream's order, to every sink; stream → (result ids, error ids)."""
        wrote: dict[int, tuple[list[int], list[int]]] = {}
        for sid, reorder in enumerate(self.streams.reorder):
            for record, ref in reorder.pop_ready(self.streams.live[sid]):
                self._write(record, ref)
                wrote.setdefault(sid, ([], []))[record.status == STATUS_ERROR].append(ref.frame_id)
        return wrote

    def _write(self, record: FrameResult, ref: FrameRef) -> None:
        """One result, with its track ids, to every sink (drawn on its raw frame where a sink draws); its
        raw slot is free then."""
        raw_pool, sinks, outlet = self.raw_pool, self.sinks, self.outlet
        events: list[Event] = []
        if self.tracking is not None and record.ok:
            record, events = self.tracking.step(replace(record, size=frame_size(ref)))
        frame = None
        if raw_pool is not None and ref.raw_slot >= 0:
            frame = raw_pool.view(ref.raw_slot, (ref.height, ref.width, 3))
        c0 = time.thread_time_ns()
        line = record.to_json()
        with output_errors(self.cfg.output.dir):
            for sink in sinks:
                sink.write(drawable(record, ref) if frame is not None and sink.draws else record,
                           frame, line)
            for event in events:
                event = replace(event, time=round(time.time(), 3))
                for sink in sinks:
                    sink.write_event(event)
        if events:
            self.stage.count("events", len(events))
        if outlet is not None:
            outlet.write(record, None, line)
        self.stage.count("work_cpu_us", (time.thread_time_ns() - c0) // 1000)
        if raw_pool is not None and ref.raw_slot >= 0:
            self.releases[self.layout.streams[ref.stream].decoder].send(
                ReleaseMsg([ref.raw_slot], epoch=ref.epoch, generation=self.ctx.generation).encode())

    def _flush(self, wrote: dict[int, tuple[list[int], list[int]]]) -> None:
        """Flush every sink; what it wrote is counted and acked once flushed, not before."""
        stage = self.stage
        c0 = time.thread_time_ns()
        with output_errors(self.cfg.output.dir):
            for sink in self.sinks:
                sink.flush()
        stage.count("work_cpu_us", (time.thread_time_ns() - c0) // 1000)
        for sid, (ok, failed) in wrote.items():
            self.streams.to_ack[sid] += ok
            self.streams.to_ack_errors[sid] += failed
            for name, ids in (("results", ok), ("errors", failed)):
                stage.count(name, len(ids))
                stage.count(stream_key(name, sid), len(ids))

    def _close_sinks(self) -> None:
        """Every stream has finished: close the sinks now, flushing what they hold (a library
        pipeline may add a stream yet: its sinks close when it stops)."""
        closing, self.sinks = self.sinks, []
        with output_errors(self.cfg.output.dir):
            for sink in closing:
                sink.close()
        _poll_sinks(closing, self.stage)
        self.stage.send_stats()

    def _handle(self, parts: list) -> ResultMsg | None:
        """One message on the results socket: a result batch (returned when it used an input slot,
        to be released), an error record or the end of a stream."""
        stage, streams = self.stage, self.streams
        buffers = [p.buffer for p in parts]
        msg: Message | None
        try:
            if len(buffers) > 1:
                msg, tensors = decode_result(buffers)
            else:
                msg, tensors = stage.decode(buffers[0]), {}
        except MessageError as exc:
            stage.bad_messages += 1
            log.warning("rejected message: %s", exc)
            return None
        if isinstance(msg, EndOfSource):
            if streams.valid(msg.stream):
                streams.reorder[msg.stream].total = msg.total
            return None
        if isinstance(msg, ErrorMsg):
            if streams.valid(msg.frame.stream):
                record = failed_record(msg.frame, streams.names[msg.frame.stream], msg.stage, msg.error)
                _queue(record, msg.frame, stage, streams)
            return None
        if isinstance(msg, SkipMsg):        # not detected (detect_every): the tracker fills it in when written
            ref = msg.frame
            if streams.valid(ref.stream):
                _queue(FrameResult(streams.names[ref.stream], ref.frame_id, ref.source, ref.index, detections=(),
                                   predicted=True), ref, stage, streams)
            return None
        if not isinstance(msg, ResultMsg):
            return None
        outputs = tensors if msg.error else self._read_outputs(msg, tensors)
        if outputs is None:
            return None
        _queue_results(msg, outputs, stage, self.adapter, streams, self.ctx.input)
        return msg if msg.slot >= 0 else None

    def _read_outputs(self, msg: ResultMsg, tensors: dict) -> dict | None:
        """The result's outputs (from its worker's output pool if it used one), split per frame;
        a failure sets ``msg.error``. None when its worker is gone before they could be read: the
        batch, not released, is sent again."""
        try:
            if msg.pool:
                tensors = self.output_pools.tensors(msg)
            tensors = {name: split_batch_axis(t, self.ctx.input.batch) for name, t in tensors.items()}
        except OSError as exc:
            if owner_gone(str(msg.pool.get("path", ""))):
                log.warning("result of batch %d dropped: %s is gone before its outputs were read",
                            msg.batch_id, msg.worker)
                return None
            msg.error = f"outputs of {msg.worker} unreadable: {exc}"          # every frame: an error record
        except MessageError as exc:
            self.stage.bad_messages += 1
            msg.error = str(exc)
        except (ValueError, IndexError) as exc:
            msg.error = str(exc)
        return tensors

    def close(self) -> None:
        _send_acks(self.stage, self.streams, self.ctx.generation)   # what was flushed and not yet acked: counted
        for sink in self.sinks:
            try:
                sink.close()
            except OSError:        # already on the way out with the error that caused it
                pass
        _poll_sinks(self.sinks, self.stage)            # the last figures (unsent records at close) go out
        if self.outlet is not None:
            self.outlet.shutdown()
        super().close()
        if self.raw_pool is not None:
            self.raw_pool.close()
        self.output_pools.close()


def run(ctx: StageContext, stage: Stage) -> None:
    Postprocessor(ctx, stage).run()


def _send_acks(stage: Stage, streams: StreamOutputs, generation: int) -> None:
    """The frame ids written and flushed since the last acks, one AckMsg per stream that has any."""
    for sid in range(len(streams.names)):
        if streams.to_ack[sid] or streams.to_ack_errors[sid]:
            stage.send(AckMsg(streams.to_ack[sid], streams.to_ack_errors[sid], sid, generation=generation))
            streams.to_ack[sid], streams.to_ack_errors[sid] = [], []


def _wait_s(heartbeat_s: float, streams: StreamOutputs, ack_due: float) -> float:
    """How long the loop may sleep: a heartbeat, or until acks that wait are due."""
    if any(streams.to_ack) or any(streams.to_ack_errors):
        return max(0.0, ack_due - time.monotonic()) + 0.001
    return heartbeat_s


def replay(path: Path, marks: dict[str, int], sinks: list[Sink]) -> int:
    """Hand the records of ``path`` from each stream's mark on (``marks``: stream → frame id; a
    stream without one from its start) to ``sinks`` again, in order: what a delivering sink held
    unconfirmed when the previous postprocessor died. Returns how many."""
    count = 0
    if not sinks or not path.exists():
        return count
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            line = line.rstrip("\n")
            try:
                result = FrameResult.from_json(line)
            except ValueError:
                continue
            if result.frame_id >= marks.get(result.stream, 0):
                for sink in sinks:
                    sink.write(result, None, line)
                count += 1
    return count


def frame_size(ref: FrameRef) -> tuple[int, int]:
    """The original frame's (width, height): what boxes, and relative zones, are in."""
    return (ref.orig_width, ref.orig_height) if ref.orig_width > 0 else (ref.width, ref.height)


def rebuild_tracks(tracking: Tracking, path: Path, known: set[str], sinks: list[Sink]) -> None:
    """A restarted postprocessor's trackers, fed every record the previous ones wrote (results.jsonl,
    which ``[tracking]`` requires), end where they were: the frames that follow get the ids they
    would have had without the restart. The events this makes again that are not ``known`` (in
    events.jsonl: the previous one died between flushing the records and their events) go to
    ``sinks`` now."""
    if not path.exists():
        return
    t0 = time.monotonic()
    missing = 0
    for event in tracking.rebuild(read_results(path)):
        if event.event_id not in known:
            missing += 1
            event = replace(event, time=round(time.time(), 3))
            for sink in sinks:
                sink.write_event(event)
    for sink in sinks:
        sink.flush()
    log.info("tracks rebuilt from %s in %.2f s; %d events written again", path, time.monotonic() - t0, missing)


def replay_events(path: Path, marks: dict[str, int], sinks: list[Sink]) -> None:
    """The events of ``path`` from each stream's mark on, to ``sinks`` again (as :func:`replay` for
    records: what MQTT had not confirmed)."""
    if sinks and path.exists():
        for event in read_events(path):
            if event.frame_id >= marks.get(event.stream, 0):
                for sink in sinks:
                    sink.write_event(event)


def _poll_sinks(sinks: list[Sink], stage: Stage) -> None:
    """Let sinks do their background work; their figures go into the stage's stats."""
    for sink in sinks:
        sink.poll()
        stage.counters.update(sink.counters())
        stage.gauges.update(sink.gauges())


@contextmanager
def output_errors(directory: str) -> Iterator[None]:
    """A sink that cannot write (full disk, permissions) stops the run: no restart can fix it."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {directory}: {exc.strerror or exc}") from None


def _queue_results(msg: ResultMsg, tensors: dict, stage: Stage, adapter: Adapter, streams: StreamOutputs,
                   model_input: ModelInput) -> None:
    """Each frame of a result batch, decoded by the adapter into its record (an error record when
    the batch failed, or its decoding), queued for in-order writing. ``model_input``: its width,
    height and batch."""
    in_w, in_h = model_input.width, model_input.height
    for row, ref in enumerate(msg.frames):
        if not streams.valid(ref.stream):
            stage.bad_messages += 1
            continue
        name = streams.names[ref.stream]
        if msg.error:
            _queue(failed_record(ref, name, "inference", msg.error), ref, stage, streams)
            continue
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        try:
            outputs = {key: np.ascontiguousarray(t[row:row + 1]) for key, t in tensors.items()}
            found = adapter.answer(adapter.decode(outputs, frame_geometry(ref, in_w, in_h)))
        except Exception as exc:  # a frame the adapter cannot decode becomes an error record
            found = {"error": f"{type(exc).__name__}: {exc}"}
        ref.stamps["post"] = time.monotonic_ns()
        stage.latency.record("postprocess", (ref.stamps["post"] - t0) / 1e6)
        stage.count("work_cpu_us", (time.thread_time_ns() - c0) // 1000)
        latencies = stage_latencies(ref.stamps)
        if "end_to_end" in latencies:
            stage.latency.record("end_to_end", latencies["end_to_end"])
            stage.latency.record(stream_key("end_to_end", ref.stream), latencies["end_to_end"])
        if "error" in found:
            record = failed_record(ref, name, "postprocess", found["error"])
        else:
            record = FrameResult(name, ref.frame_id, ref.source, ref.index, device=msg.device, worker=msg.worker,
                                 latency_ms=latencies, **found)
        _queue(record, ref, stage, streams)


def _queue(record: FrameResult, ref: FrameRef, stage: Stage, streams: StreamOutputs) -> None:
    """Hold a record for in-order writing. A duplicate's raw slot is not released again: the
    first copy of the frame owns (and releases) it, and it may already serve another frame."""
    if not streams.reorder[ref.stream].add(record, ref):
        stage.count("duplicates")
        stage.count(stream_key("duplicates", ref.stream))
