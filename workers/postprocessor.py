"""Postprocessor stage: decodes outputs with the model's adapter and writes sinks in frame order.

Results arrive from any worker in any order, frames of many streams mixed; one reorder buffer
per stream releases them by frame id, so each stream's results come out in that stream's order
and a stalled stream holds up no other. Frame ids already written (after a restart, or a batch
that a dead worker had finished) are counted as duplicates and not written twice. Each written
id is acknowledged to the supervisor, per stream, which keeps the ledgers used to resume.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zmq

from engine.core.errors import OutputError
from engine.core.geometry import Geometry
from engine.core.results import Classification, Detection, FrameResult
from engine.io.sinks import ApiSink, Sink, encode_record, open_sinks
from engine.io.streams import Layout, StreamSpec
from engine.model.adapters import Adapter, create_adapter
from engine.observe.metrics import stream_key
from engine.protocol.channels import make_socket, pending
from engine.protocol.context import StageContext
from engine.protocol.ledger import FrameLedger
from engine.protocol.messages import (
    AckMsg,
    ControlMsg,
    EndOfSource,
    ErrorMsg,
    FrameRef,
    MessageError,
    ReleaseMsg,
    ResultMsg,
    decode_result,
)
from engine.protocol.output_pools import OutputPools, owner_gone, split_batch_axis
from engine.protocol.shm import SlotPool
from workers.runtime import Stage

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


def failed_record(ref: FrameRef, stream: str, stage: str, error: str) -> dict:
    return FrameResult.failed(stream, ref.frame_id, ref.source, ref.index, stage, error).to_dict()


def drawable(record: dict, ref: FrameRef) -> dict:
    """The record with boxes scaled to the stored frame (smaller than the original if shrunk)."""
    if not ref.orig_width or (ref.orig_width, ref.orig_height) == (ref.width, ref.height):
        return record
    kx, ky = ref.width / ref.orig_width, ref.height / ref.orig_height
    scaled = []
    for det in record.get("detections", []):
        det = dict(det)
        x1, y1, x2, y2 = det["box"]
        det["box"] = [x1 * kx, y1 * ky, x2 * kx, y2 * ky]
        det["keypoints"] = [[x * kx, y * ky] for x, y in det.get("keypoints", [])]
        scaled.append(det)
    return {**record, "detections": scaled}


class Reorder:
    """One stream's finished frames, held until every lower frame id of the stream is written."""

    def __init__(self, done: FrameLedger) -> None:
        self.done = done
        self.pending: dict[int, tuple[dict, FrameRef, float]] = {}
        self.next_id = 0
        self.total: int | None = None
        self._skip_done()

    def _skip_done(self) -> None:
        self.next_id = max(self.next_id, self.done.low)       # [0, low) is written: one step
        while self.next_id in self.done:
            self.next_id += 1

    def add(self, record: dict, ref: FrameRef) -> bool:
        """Queue a record; False if its id was already written (a duplicate)."""
        fid = ref.frame_id
        if fid < self.next_id or fid in self.done or fid in self.pending:
            return False
        self.pending[fid] = (record, ref, time.monotonic())
        return True

    def pop_ready(self, live: bool) -> list[tuple[dict, FrameRef]]:
        """Records that can be written now, in frame order."""
        out = []
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


def run(ctx: StageContext, stage: Stage) -> None:
    cfg = ctx.config
    layout = Layout.from_dict(ctx.layout)
    keep_raw = cfg.output.images or cfg.output.video
    adapter = create_adapter(cfg.model)
    raw_pool = SlotPool(ctx.pools["raw"]) if keep_raw else None
    results = make_socket(stage.zmq, zmq.PULL, bind=ctx.endpoints["results"], hwm=10_000)
    releases = [make_socket(stage.zmq, zmq.PUSH, connect=ctx.endpoints[layout.decoder_name(d)])
                for d in range(layout.decoders)] if keep_raw else []
    inputs = make_socket(stage.zmq, zmq.PUSH, connect=ctx.endpoints["inputs"])
    with output_errors(cfg.output.dir):
        sinks = open_sinks(cfg.output, resume=ctx.generation > 0, streams=[s.name for s in layout.streams])
    outlet = ApiSink(ctx.endpoints["api"]) if "api" in ctx.endpoints else None   # a library pipeline
    if ctx.generation > 0 and cfg.output.jsonl:     # what the previous postprocessor held undelivered
        replay(Path(cfg.output.dir) / "results.jsonl", ctx.replay_from, [s for s in sinks if s.replays])
        if outlet is not None:                      # the iterator drops what it already has
            replay(Path(cfg.output.dir) / "results.jsonl", ctx.api_from, [outlet])
    streams = StreamOutputs(ctx, layout)
    output_pools = OutputPools(ctx.run_id)

    def on_control(msg: ControlMsg) -> None:
        """A library pipeline adds a stream (known here before its first frame) or ends one."""
        try:
            if msg.command == "stream_added":
                spec = StreamSpec(**json.loads(msg.arg))
                if spec.sid == len(streams.names):
                    streams.add(spec)
                    stage.declare(*(stream_key(name, spec.sid) for name in ("results", "errors", "duplicates")))
                    if outlet is not None:
                        outlet.reopen()
                stage.send(ControlMsg("stream_added", str(spec.sid), ctx.generation))
            elif msg.command == "end_stream" and streams.valid(int(msg.arg)):
                streams.drop(int(msg.arg))
        except (ValueError, KeyError, TypeError) as exc:
            stage.bad_messages += 1
            log.warning("bad %s command: %s", msg.command, exc)

    stage.handler = on_control
    stage.declare("results", "errors", "duplicates")
    for sid in range(len(streams.names)):
        stage.declare(*(stream_key(name, sid) for name in ("results", "errors", "duplicates")))
    stage.ready()
    poller = zmq.Poller()
    poller.register(results, zmq.POLLIN)
    poller.register(stage.control, zmq.POLLIN)      # a stop wakes the loop at once
    ack_due = 0.0
    ack_interval = ACK_INTERVAL_S if cfg.output.jsonl else 0.0   # without the file, a restart relies on acks alone
    try:
        while not stage.stopping:
            stage.tick()
            if outlet is not None and outlet.backlogged:     # the consumer is behind: let it catch up
                time.sleep(0.005)
                outlet.poll()
            elif results in dict(poller.poll(stage.poll_ms(_wait_s(cfg.pipeline.heartbeat_s, streams, ack_due)))):
                held: list[ResultMsg] = []           # results now here: their input slots may be reused
                for parts in pending(results, multipart=True, copy=False):
                    _handle(parts, stage, adapter, streams, ctx.input, output_pools, held)
                if held:
                    inputs.send(ReleaseMsg([m.slot for m in held], [m.batch_id for m in held],
                                           generation=ctx.generation).encode())
            wrote: dict[int, tuple[list[int], list[int]]] = {}   # stream → (result ids, error ids) this turn
            for sid, reorder in enumerate(streams.reorder):
                for record, ref in reorder.pop_ready(streams.live[sid]):
                    frame = None
                    if raw_pool is not None and ref.raw_slot >= 0:
                        frame = raw_pool.view(ref.raw_slot, (ref.height, ref.width, 3))
                    c0 = time.thread_time_ns()
                    line = encode_record(record)
                    with output_errors(cfg.output.dir):
                        for sink in sinks:
                            sink.write(drawable(record, ref) if frame is not None and sink.draws else record,
                                       frame, line)
                    if outlet is not None:
                        outlet.write(record, None, line)
                    stage.count("work_cpu_us", (time.thread_time_ns() - c0) // 1000)
                    if raw_pool is not None and ref.raw_slot >= 0:
                        releases[layout.streams[sid].decoder].send(
                            ReleaseMsg([ref.raw_slot], epoch=ref.epoch, generation=ctx.generation).encode())
                    wrote.setdefault(sid, ([], []))[record["status"] == "error"].append(ref.frame_id)
            if wrote:
                c0 = time.thread_time_ns()
                with output_errors(cfg.output.dir):
                    for sink in sinks:
                        sink.flush()
                stage.count("work_cpu_us", (time.thread_time_ns() - c0) // 1000)
                for sid, (ok, failed) in wrote.items():         # counted and acked once flushed, not before
                    streams.to_ack[sid] += ok
                    streams.to_ack_errors[sid] += failed
                    for name, ids in (("results", ok), ("errors", failed)):
                        stage.count(name, len(ids))
                        stage.count(stream_key(name, sid), len(ids))
            ended = [sid for sid, r in enumerate(streams.reorder) if r.finished and not streams.finished[sid]]
            if ended or time.monotonic() >= ack_due:
                _send_acks(stage, streams, ctx.generation)
                ack_due = time.monotonic() + ack_interval
            for sid in ended:
                streams.finished[sid] = True
            _poll_sinks(sinks, stage)
            if outlet is not None:
                if all(streams.finished):
                    outlet.close(len(streams.names))   # the end marker (once), after the last record
                outlet.poll()
                stage.gauges["api_pending"] = outlet.pending
            if all(streams.finished) and sinks and outlet is None:   # the run ends on the last "finished": flush
                # first (a library pipeline may add a stream yet: its sinks close when it stops)
                closing, sinks = sinks, []
                with output_errors(cfg.output.dir):
                    for sink in closing:
                        sink.close()
                _poll_sinks(closing, stage)
                stage.send_stats()
            for sid in ended:
                stage.send(AckMsg([], [], sid, finished=True, generation=ctx.generation))
            stage.gauges["reorder"] = sum(len(r.pending) for r in streams.reorder)
    finally:
        _send_acks(stage, streams, ctx.generation)   # what was flushed and not yet acked: the report counts it
        for sink in sinks:
            try:
                sink.close()
            except OSError:        # already on the way out with the error that caused it
                pass
        _poll_sinks(sinks, stage)            # the last figures (unsent records at close) go out
        if outlet is not None:
            outlet.shutdown()
        for sock in (results, inputs, *releases):
            sock.close(0)
        if raw_pool is not None:
            raw_pool.close()
        output_pools.close()


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
                record = result.to_dict()
                for sink in sinks:
                    sink.write(record, None, line)
                count += 1
    return count


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


def _handle(parts: list, stage: Stage, adapter: Adapter, streams: StreamOutputs, model_input: dict,
            output_pools: OutputPools, held: list[ResultMsg]) -> None:
    """One message on the results socket: a result batch (appended to ``held`` when it used an
    input slot), an error record or the end of a stream. ``model_input``: its width, height and
    batch."""
    buffers = [p.buffer for p in parts]
    try:
        if len(buffers) > 1:
            msg, tensors = decode_result(buffers)
        else:
            msg, tensors = stage.decode(buffers[0]), {}
    except MessageError as exc:
        stage.bad_messages += 1
        log.warning("rejected message: %s", exc)
        return
    if isinstance(msg, EndOfSource):
        if streams.valid(msg.stream):
            streams.reorder[msg.stream].total = msg.total
        return
    if isinstance(msg, ErrorMsg):
        if streams.valid(msg.frame.stream):
            record = failed_record(msg.frame, streams.names[msg.frame.stream], msg.stage, msg.error)
            _queue(record, msg.frame, stage, streams)
        return
    if not isinstance(msg, ResultMsg):
        return
    if not msg.error:
        try:
            if msg.pool:
                tensors = output_pools.tensors(msg)
            tensors = {name: split_batch_axis(t, model_input["batch"]) for name, t in tensors.items()}
        except OSError as exc:
            if owner_gone(str(msg.pool.get("path", ""))):   # its batch, not released, is sent again
                log.warning("result of batch %d dropped: %s is gone before its outputs were read",
                            msg.batch_id, msg.worker)
                return
            msg.error = f"outputs of {msg.worker} unreadable: {exc}"          # every frame: an error record
        except MessageError as exc:
            stage.bad_messages += 1
            msg.error = str(exc)
        except (ValueError, IndexError) as exc:
            msg.error = str(exc)
    if msg.slot >= 0:
        held.append(msg)
    in_w, in_h = model_input["width"], model_input["height"]
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
            decoded = adapter.decode(outputs, frame_geometry(ref, in_w, in_h))
            if adapter.kind == "classification":
                found = {"classes": tuple(Classification.from_dict(c) for c in decoded)}
            else:
                found = {"detections": tuple(Detection.from_dict(d) for d in decoded)}
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
                                 latency_ms=latencies, **found).to_dict()
        _queue(record, ref, stage, streams)


def _queue(record: dict, ref: FrameRef, stage: Stage, streams: StreamOutputs) -> None:
    """Hold a record for in-order writing. A duplicate's raw slot is not released again: the
    first copy of the frame owns (and releases) it, and it may already serve another frame."""
    if not streams.reorder[ref.stream].add(record, ref):
        stage.count("duplicates")
        stage.count(stream_key("duplicates", ref.stream))
