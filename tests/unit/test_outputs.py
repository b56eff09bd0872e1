"""Inference outputs on their way to the postprocessor: the worker's output slots, their reading
on the other side, and the split of a batch's outputs into one row per frame."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import openvino.opset13 as ops
import pytest

from engine.messages import FrameRef, MessageError, ResultMsg
from engine.ovruntime import ov
from tests.conftest import REPO
from workers.inference import OutputSlots, output_layout
from workers.postprocessor import OutputPools, owner_gone, split_batch_axis


def _compiled(shape: list[int]) -> ov.CompiledModel:
    x = ops.parameter(ov.PartialShape(shape), ov.Type.f32)
    return ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "CPU")


def test_fixed_outputs_get_slots_and_dynamic_ones_do_not():
    assert output_layout(_compiled([2, 5])) == [("float32", [2, 5])]
    assert output_layout(_compiled([-1, 5])) is None       # their size is known only after inference
    assert OutputSlots.fits([("float32", [2, 5])], 8)
    assert not OutputSlots.fits(None, 8)
    assert not OutputSlots.fits([("float32", [1 << 28])], 8)


def test_a_request_writes_into_the_slot_the_postprocessor_reads():
    compiled = _compiled([2, 5])
    slots = OutputSlots(uuid.uuid4().hex[:8], "test", output_layout(compiled), 4)
    try:
        request = compiled.create_infer_request()
        request.set_output_tensor(0, slots.tensors[2][0])
        request.infer({0: np.arange(-5, 5, dtype=np.float32).reshape(2, 5)})
        msg = ResultMsg([FrameRef(0, 0, "a.jpg")], "inference-0", "CPU", outputs=[["out", "float32", [2, 5]]],
                        slot=2, pool=slots.spec.to_dict())
        pools = OutputPools()
        seen = pools.tensors(msg)["out"]
        assert seen.tolist() == [[0, 0, 0, 0, 0], [0, 1, 2, 3, 4]]
        pools.close()
    finally:
        slots.close()


def test_a_pool_outside_shared_memory_is_refused():
    msg = ResultMsg([], "inference-0", "CPU", outputs=[["out", "float32", [1]]], slot=0,
                    pool={"path": "/etc/passwd", "slot_bytes": 4096, "slots": 1})
    with pytest.raises(MessageError, match="outside shared memory"):
        OutputPools().tensors(msg)
    msg.pool = {"path": 3}
    with pytest.raises(MessageError, match="bad output pool"):
        OutputPools().tensors(msg)


def test_owner_gone_tells_a_dead_worker_from_a_live_one():
    assert not owner_gone(f"/proc/{os.getpid()}/fd/0")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()                                       # reaped: its pid names no process any more
    assert owner_gone(f"/proc/{child.pid}/fd/3")
    assert not owner_gone(str(REPO / "somefile"))     # not a descriptor path: nothing to tell


def test_split_batch_axis_finds_each_frames_rows():
    batched = np.arange(24).reshape(4, 6)
    assert split_batch_axis(batched, 4) is batched
    flat = np.arange(4 * 3 * 2).reshape(1, 12, 2)                 # a Reshape that hard-codes batch 1
    assert split_batch_axis(flat, 4).shape == (4, 3, 2) and split_batch_axis(flat, 4)[1, 0].tolist() == [6, 7]
    rows = np.array([[[[0, 1, .9, 0, 0, 1, 1], [1, 2, .8, 0, 0, 1, 1], [0, 3, .7, 0, 0, 1, 1],
                       [-1, 0, 0, 0, 0, 0, 0]]]], np.float32)    # DetectionOutput: rows tagged by image
    split = split_batch_axis(rows, 2)
    assert split.shape == (2, 1, 4, 7)
    assert split[0, 0, :2, 1].tolist() == [1, 3] and split[0, 0, 2, 0] == -1
    assert split[1, 0, 0, 1] == 2 and split[1, 0, 0, 0] == 0 and split[1, 0, 1, 0] == -1
    with pytest.raises(ValueError, match="cannot be split"):
        split_batch_axis(np.zeros((1, 7)), 4)
