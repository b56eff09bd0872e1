"""The inference worker's request pool: a batch starts only on an idle request, a finished one
is handed over once (in the order the requests finished) and reused only after the loop is done
with its outputs; a failed inference becomes an error, not a crash."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import openvino.opset13 as ops

from engine.model.runtime import ov
from engine.protocol.messages import BatchMsg, FrameRef
from workers.inference import RequestPool


class FakeRequest:
    """An infer request that finishes when the test says so."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.runs = 0
        self.error = ""
        self.outputs: dict[int, object] = {}
        self.waited = 0

    def set_callback(self, callback, userdata) -> None:
        self._callback, self._userdata = callback, userdata

    def set_input_tensor(self, tensor) -> None:
        self.input = tensor

    def set_output_tensor(self, i: int, tensor) -> None:
        self.outputs[i] = tensor

    def start_async(self) -> None:
        self.runs += 1

    def finish(self) -> None:                        # OpenVINO calls back on one of its threads
        self._callback(self._userdata)

    def wait(self) -> None:
        self.waited += 1
        if self.error:
            raise RuntimeError(self.error)

    def get_output_tensor(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(data=np.full(2, 10 * self.index + i))


class FakeCompiled:
    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def create_infer_request(self) -> FakeRequest:
        self.requests.append(FakeRequest(len(self.requests)))
        return self.requests[-1]


def _batch(slot: int) -> BatchMsg:
    return BatchMsg(slot, [FrameRef(slot, "x.jpg", 0)])


def _pool(nireq: int) -> tuple[RequestPool, FakeCompiled, list[int]]:
    compiled, wakes = FakeCompiled(), []
    return RequestPool(compiled, nireq, lambda: wakes.append(1)), compiled, wakes


def test_a_batch_starts_only_on_an_idle_request():
    pool, compiled, _ = _pool(2)
    assert pool.start("t0", _batch(0)) and pool.start("t1", _batch(1))
    assert pool.in_flight == 2
    assert not pool.start("t2", _batch(2))                   # both busy: the credit protocol forbids this
    assert [r.input for r in compiled.requests] == ["t0", "t1"] and [r.runs for r in compiled.requests] == [1, 1]


def test_finished_requests_come_out_in_the_order_they_finished_with_their_outputs():
    pool, compiled, wakes = _pool(2)
    pool.start("t0", _batch(0))
    pool.start("t1", _batch(1))
    assert list(pool.collect(1)) == []                       # nothing finished yet
    compiled.requests[1].finish()
    compiled.requests[0].finish()
    assert len(wakes) == 2                                   # each completion wakes the loop
    done = list(pool.collect(2))
    assert [d.batch.slot for d in done] == [1, 0]
    assert [d.arrays[1].tolist() for d in done] == [[11, 11], [1, 1]]
    assert all(d.error == "" and d.started <= d.ended for d in done)
    assert pool.in_flight == 0 and list(pool.collect(2)) == []   # each is handed over once


def test_a_request_is_reused_only_once_the_loop_is_done_with_its_outputs():
    pool, compiled, _ = _pool(1)
    pool.start("t0", _batch(0))
    compiled.requests[0].finish()
    results = pool.collect(1)
    first = next(results)                                    # its outputs are being sent...
    assert first.batch.slot == 0 and pool.in_flight == 0
    assert not pool.start("t1", _batch(1))                   # ...so its request is not idle yet
    assert next(results, None) is None
    assert pool.start("t1", _batch(1)) and compiled.requests[0].runs == 2


def test_a_failed_inference_is_an_error_and_its_request_goes_back_idle():
    pool, compiled, _ = _pool(1)
    compiled.requests[0].error = "device lost"
    pool.start("t0", _batch(3))
    compiled.requests[0].finish()
    (done,) = pool.collect(1)
    assert done.arrays is None and "device lost" in done.error and done.batch.slot == 3
    compiled.requests[0].error = ""
    assert pool.start("t1", _batch(4))


def test_outputs_go_where_the_loop_says_and_wait_all_waits_for_the_busy_ones_only():
    pool, compiled, _ = _pool(2)
    pool.start("t0", _batch(0), ["out0", "out1"])
    assert compiled.requests[0].outputs == {0: "out0", 1: "out1"}
    pool.wait_all()
    assert [r.waited for r in compiled.requests] == [1, 0]


def test_a_real_request_calls_back_from_openvino_and_its_outputs_are_read():
    x = ops.parameter(ov.PartialShape([1, 4]), ov.Type.f32)
    compiled = ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "CPU")
    woken = threading.Event()
    pool = RequestPool(compiled, 2, woken.set)
    data = np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)
    assert pool.start(ov.Tensor(data), _batch(0))
    assert woken.wait(10)                                    # the callback recorded it, then woke the loop
    (done,) = pool.collect(1)
    assert done.arrays[0].tolist() == [[0.0, 2.0, 0.0, 4.0]] and done.error == ""
    pool.wait_all()
