"""Inference stage: one device, N async infer requests, input tensors that are views of shm.

Every input slot gets one ``ov.Tensor`` wrapping its shared memory (no copy). The worker
announces one credit per infer request once; a credit comes back to the preprocessor when the
postprocessor releases the batch's input slot (see the README's design). Outputs go the same way: the
worker makes an output pool with one slot per input slot, and each request writes its outputs
straight into the slot of its batch's input, which stays the batch's until the postprocessor
releases it; the result message only names the slot. (A graph whose outputs have no fixed size
sends them beside the msgpack header instead, copied once by ZeroMQ from the request's memory.)
The completion callback only notes which request finished and wakes the main loop.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import zmq

from engine.config import InferenceConfig, RunConfig
from engine.core.errors import DeviceError, describe
from engine.model.prepare import device_info, load_compiled, output_shapes
from engine.model.runtime import ov
from engine.protocol.channels import pending
from engine.protocol.context import StageContext
from engine.protocol.messages import BatchMsg, CreditMsg, ResultMsg, encode_result
from engine.protocol.shm import MAX_OUTPUT_POOL_BYTES, SlotPool, TensorLayout, tensor_offsets
from engine.protocol.wakeup import Wakeup
from workers.runtime import Stage, StageLoop, own_threads_cpu_s, stage_main

log = logging.getLogger(__name__)


QUEUED_PER_REQUEST = 2    # nireq = 0 on a CPU: this many requests per one the device finds optimal


def auto_nireq(optimal: int, device: str) -> int:
    """Requests when ``nireq = 0``: on a CPU, twice OpenVINO's optimum (one per stream), so every
    stream has a request queued behind the one it runs and starts it the moment it finishes,
    instead of idling (its threads spinning) while the finished request's credit travels to the
    preprocessor and the next batch comes back. Other devices queue internally already."""
    return optimal * QUEUED_PER_REQUEST if device.split(".")[0].split(":")[0] == "CPU" else optimal


POOLED_TYPES = {"f64", "f32", "f16", "i64", "i32", "i16", "i8", "u64", "u32", "u16", "u8", "boolean"}


def output_layout(compiled: ov.CompiledModel) -> TensorLayout | None:
    """(dtype, shape) of each output, or None when one has no fixed shape (known after inference)
    or an element type numpy has no plain dtype for (bf16, packed 4-bit, strings)."""
    layout = []
    for port in compiled.outputs:
        shape, element = port.get_partial_shape(), port.get_element_type()
        if shape.is_dynamic or element.get_type_name() not in POOLED_TYPES:
            return None
        layout.append((str(element.to_dtype()), [int(d) for d in shape.to_shape()]))
    return layout


class OutputSlots:
    """This worker's output pool: per input slot, one OpenVINO tensor per output over shared
    memory, which a request writes its outputs into (no copy, no socket)."""

    def __init__(self, run_id: str, name: str, layout: TensorLayout, slots: int) -> None:
        self.layout = layout
        self.spec = SlotPool.create(run_id, f"{name}-{os.getpid()}-outputs", tensor_offsets(layout)[1], slots)
        self._pool = SlotPool(self.spec)
        self.tensors = [[ov.Tensor(a, shared_memory=True) for a in self._pool.tensors(slot, layout)]
                        for slot in range(slots)]

    @staticmethod
    def fits(layout: TensorLayout | None, slots: int) -> bool:
        return layout is not None and tensor_offsets(layout)[1] * slots <= MAX_OUTPUT_POOL_BYTES

    def close(self) -> None:
        """Drop the mapping. A memfd stays open until the process exits: the postprocessor may
        still have to map it for results sent last, and may tell a pool it cannot open from a
        dead worker's (see :func:`engine.protocol.output_pools.owner_gone`)."""
        self.tensors = []
        self._pool.close()
        if not self.spec.path.startswith("/proc/"):
            SlotPool.unlink(self.spec)


Loaded = tuple[ov.CompiledModel, int, float]        # compiled model, nireq, compile ms


def load(cfg: RunConfig, device: str, batch: int) -> Loaded:
    """Read, prepare and compile the model on this worker's device; returns (compiled, nireq, ms)."""
    inference: InferenceConfig = cfg.inference
    t0 = time.monotonic()
    compiled = load_compiled(ov.Core(), cfg, device, batch)
    nireq = inference.nireq or auto_nireq(int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")), device)
    if nireq < 1:
        raise DeviceError(f"{device} reports {nireq} optimal infer requests")
    return compiled, nireq, (time.monotonic() - t0) * 1000


def prepare(cfg: RunConfig, device: str, batch: int) -> Callable[[StageContext, Stage], None]:
    """Compile as soon as the supervisor has chosen the batch, before this worker's context
    (pools, sockets) exists: :class:`InferenceWorker` starts with the result. A failure is raised there, to be
    reported like any, once the worker can tell the supervisor."""
    try:
        loaded: Loaded | Exception = load(cfg, device, batch)
    except Exception as exc:  # noqa: BLE001 — reported by run(), through the control channel
        loaded = exc
    return lambda ctx, stage: run(ctx, stage, loaded)


class Finished(NamedTuple):
    """A batch whose request finished: its outputs (views, valid until the next one is asked for),
    or None and the error if it failed; when its inference started and ended (monotonic ns)."""

    batch: BatchMsg
    arrays: list[np.ndarray] | None
    error: str
    started: int
    ended: int


class RequestPool:
    """N infer requests owned by the main loop: a request is reused only after the main loop has
    sent its outputs, so a returned credit always finds an idle request. The completion callback
    (on any OpenVINO thread) only records the request and the time, then wakes the main loop."""

    def __init__(self, compiled: ov.CompiledModel, nireq: int, wake: Callable[[], None]) -> None:
        self._requests = [compiled.create_infer_request() for _ in range(nireq)]
        self._idle = deque(range(nireq))
        self._busy: dict[int, tuple[BatchMsg, int]] = {}
        self._done: deque[tuple[int, int]] = deque()
        for i, request in enumerate(self._requests):
            request.set_callback(self._on_done, i)
        self._wake = wake

    def _on_done(self, index: int) -> None:
        self._done.append((index, time.monotonic_ns()))
        self._wake()

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def start(self, tensor: ov.Tensor, batch: BatchMsg, outputs: list[ov.Tensor] | None = None) -> bool:
        """Start ``batch`` on an idle request, writing into ``outputs`` if given; False if none is idle."""
        if not self._idle:
            return False
        index = self._idle.popleft()
        request = self._requests[index]
        request.set_input_tensor(tensor)
        for i, output in enumerate(outputs or ()):
            request.set_output_tensor(i, output)
        self._busy[index] = (batch, time.monotonic_ns())
        request.start_async()
        return True

    def collect(self, outputs: int) -> Iterator[Finished]:
        """Finished batches, each with its first ``outputs`` outputs (views of the request's
        memory, or of the output slot it wrote into), valid until the caller asks for the next."""
        while self._done:
            index, ended = self._done.popleft()
            batch, started = self._busy.pop(index)
            request = self._requests[index]
            try:
                request.wait()                       # returns at once; raises if inference failed
                arrays, error = [request.get_output_tensor(i).data for i in range(outputs)], ""
            except Exception as exc:  # a failed inference becomes error records, the worker goes on
                arrays, error = None, describe(exc)
            yield Finished(batch, arrays, error, started, ended)
            self._idle.append(index)

    def wait_all(self) -> None:
        for index in list(self._busy):
            self._requests[index].wait()


class InferenceWorker(StageLoop):
    """An inference worker's loop: batches in (one per credit), results out."""

    def __init__(self, ctx: StageContext, stage: Stage, loaded: Loaded | Exception | None = None) -> None:
        super().__init__(ctx, stage)
        batch_size, in_h, in_w = ctx.input.batch, ctx.input.height, ctx.input.width
        if isinstance(loaded, Exception):
            raise loaded
        self.compiled, self.nireq, self.compile_ms = loaded or load(ctx.config, ctx.device, batch_size)
        compiled = self.compiled
        self.pool = SlotPool(ctx.pools["input"])
        self.tensors = [ov.Tensor(self.pool.view(slot, (batch_size, in_h, in_w, 3)), shared_memory=True)
                        for slot in range(self.pool.spec.slots)]
        self.names = list(output_shapes(compiled))
        self.outputs = _output_slots(ctx, compiled, self.pool.spec.slots)
        self.instance = f"{ctx.name}@{os.getpid()}"    # a restarted worker is a new instance to the dispatcher
        self.dispatch = self.socket(zmq.DEALER, identity=self.instance, connect=ctx.endpoints["dispatch"],
                                    hwm=10_000)
        self.results = self.socket(zmq.PUSH, connect=ctx.endpoints["results"], hwm=10_000)
        self.wake = Wakeup()                  # a request finished
        self.requests = RequestPool(compiled, self.nireq, self.wake.set)
        self.watch(self.wake.fileno(), self.on_finished)
        self.watch(self.dispatch, self.on_batches)
        stage.declare("frames", "batches", "errors")
        stage.gauges.update(nireq=self.nireq, batch=batch_size, in_flight=0,
                            ready_own_cpu_s=round(own_threads_cpu_s(), 3))

    def start(self) -> None:
        self.stage.ready(device=self.ctx.device, nireq=self.nireq, compile_ms=round(self.compile_ms, 1),
                         **device_info(self.compiled))
        self.dispatch.send(CreditMsg(self.instance, self.nireq, generation=self.ctx.generation).encode())

    def fill_stats(self) -> None:
        self.stage.gauges.update(own_cpu_s=round(own_threads_cpu_s(), 3))   # not OpenVINO's

    def on_finished(self) -> None:
        """Requests finished (their callbacks woke the loop): their results go out."""
        self.wake.clear()
        for done in self.requests.collect(0 if self.outputs else len(self.names)):
            self._send_result(done)

    def on_batches(self) -> None:
        for data in pending(self.dispatch):
            msg = self.stage.decode(data)
            if isinstance(msg, BatchMsg) and 0 <= msg.slot < len(self.tensors):
                outputs = self.outputs.tensors[msg.slot] if self.outputs is not None else None
                if not self.requests.start(self.tensors[msg.slot], msg, outputs):   # credits make this impossible
                    self._send_result(Finished(msg, None, "no free infer request (credit protocol violated)", 0, 0))

    def after_poll(self) -> None:
        self.stage.gauges["in_flight"] = self.requests.in_flight

    def _send_result(self, done: Finished) -> None:
        stage, batch, outputs = self.stage, done.batch, self.outputs
        for ref in batch.frames:
            ref.stamps["inf0"], ref.stamps["inf1"] = done.started, done.ended
            stage.latency.record("queue", (done.started - ref.stamps.get("pre", done.started)) / 1e6)
        stage.latency.record("inference", (done.ended - done.started) / 1e6)
        msg = ResultMsg(batch.frames, self.ctx.name, self.ctx.device, slot=batch.slot, batch_id=batch.batch_id,
                        error=done.error if done.arrays is None else "", generation=self.ctx.generation)
        if done.arrays is None:                 # every frame of the batch becomes an error record
            stage.count("errors", len(batch.frames))
            self.results.send(msg.encode())
            return
        if outputs is not None:                 # the request wrote them into the batch's output slot
            msg.outputs = [[name, dtype, shape] for name, (dtype, shape) in zip(self.names, outputs.layout)]
            msg.pool = outputs.spec.to_dict()
            self.results.send(msg.encode())
        else:                                   # copied here: no buffer to track
            self.results.send_multipart(encode_result(msg, list(zip(self.names, done.arrays))))
        stage.count("frames", len(batch.frames))
        stage.count("batches")

    def close(self) -> None:
        self.requests.wait_all()
        super().close()
        self.wake.close()
        self.tensors = []
        self.pool.close()
        if self.outputs is not None:
            self.outputs.close()


def run(ctx: StageContext, stage: Stage, loaded: Loaded | Exception | None = None) -> None:
    InferenceWorker(ctx, stage, loaded).run()


def _output_slots(ctx: StageContext, compiled: ov.CompiledModel, slots: int) -> OutputSlots | None:
    """The output pool, or None when the outputs must go beside the result message instead."""
    layout = output_layout(compiled)
    if layout is None or not OutputSlots.fits(layout, slots):
        return None
    outputs = None
    try:
        outputs = OutputSlots(ctx.run_id, ctx.name, layout, slots)
        trial = compiled.create_infer_request()          # a device refusing host tensors says so now
        for i, tensor in enumerate(outputs.tensors[0]):
            trial.set_output_tensor(i, tensor)
        return outputs
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        log.warning("outputs go beside the result messages: no output pool (%s)", exc)
        if outputs is not None:
            outputs.close()
        return None


if __name__ == "__main__":
    stage_main(prepare)
