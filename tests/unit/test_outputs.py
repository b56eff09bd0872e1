"""Inference outputs on their way to the postprocessor: the worker's output slots, their reading
on the other side, and the split of a batch's outputs into one row per frame."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import openvino.opset13 as ops
import pytest

from engine.model.runtime import ov
from engine.protocol.messages import FrameRef, MessageError, ResultMsg
from engine.protocol.output_pools import OutputPools, owner_gone, split_batch_axis
from workers.inference import OutputSlots, output_layout


def _compiled(shape: list[int], element: ov.Type = ov.Type.f32) -> ov.CompiledModel:
    x = ops.parameter(ov.PartialShape(shape), element)
    return ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "CPU")


def _result(slots: OutputSlots, worker: str = "inference-0", slot: int = 2) -> ResultMsg:
    return ResultMsg([FrameRef(0, 0, "a.jpg")], worker, "CPU", outputs=[["out", "float32", [2, 5]]],
                     slot=slot, pool=slots.spec.to_dict())


@pytest.fixture
def run_id():
    return uuid.uuid4().hex[:8]


def test_fixed_outputs_get_slots_and_the_others_do_not():
    assert output_layout(_compiled([2, 5])) == [("float32", [2, 5])]
    assert output_layout(_compiled([-1, 5])) is None       # their size is known only after inference
    assert output_layout(_compiled([2, 5], ov.Type.bf16)) is None      # no plain numpy dtype
    assert OutputSlots.fits([("float32", [2, 5])], 8)
    assert not OutputSlots.fits(None, 8)
    assert not OutputSlots.fits([("float32", [1 << 28])], 8)


def test_a_request_writes_into_the_slot_the_postprocessor_reads(run_id):
    compiled = _compiled([2, 5])
    slots = OutputSlots(run_id, "inference-0", output_layout(compiled), 4)
    pools = OutputPools(run_id)
    try:
        request = compiled.create_infer_request()
        request.set_output_tensor(0, slots.tensors[2][0])
        request.infer({0: np.arange(-5, 5, dtype=np.float32).reshape(2, 5)})
        seen = pools.tensors(_result(slots))["out"]
        assert seen.tolist() == [[0, 0, 0, 0, 0], [0, 1, 2, 3, 4]]
        with pytest.raises(ValueError):
            seen[0, 0] = 1.0                                # mapped read-only
    finally:
        pools.close()
        slots.close()


def test_a_dead_workers_late_result_leaves_its_successors_pool_usable(run_id):
    layout = [("float32", [2, 5])]
    successor = OutputSlots(run_id, "inference-0", layout, 4)
    pools = OutputPools(run_id)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    late = _result(successor)
    late.pool = {**late.pool, "path": f"/proc/{child.pid}/fd/7"}      # the dead instance's pool
    try:
        assert pools.tensors(_result(successor))["out"].shape == (2, 5)
        with pytest.raises(OSError):
            pools.tensors(late)
        assert owner_gone(late.pool["path"])
        assert pools.tensors(_result(successor))["out"].shape == (2, 5)     # still mapped, still open
    finally:
        pools.close()
        successor.close()


def test_only_this_runs_output_pools_are_opened(run_id):
    slots = OutputSlots(run_id, "inference-0", [("float32", [2, 5])], 4)
    pools = OutputPools(run_id)
    with tempfile.TemporaryFile() as other:
        own = f"/proc/{os.getpid()}/fd"
        refused = ["/etc/passwd", "/proc/../etc/passwd", f"/proc/{os.getpid()}/root/etc/passwd",
                   "/proc/self/fd/0", f"{own}/{other.fileno()}"]        # the last: a descriptor, not a pool
        try:
            for path in refused:
                msg = _result(slots)
                msg.pool = {**msg.pool, "path": path}
                with pytest.raises(MessageError):
                    pools.tensors(msg)
            assert pools.tensors(_result(slots))["out"].shape == (2, 5)
            with pytest.raises(MessageError):                             # another run's
                OutputPools("otherrun").tensors(_result(slots))
            with pytest.raises(MessageError):                             # another worker's
                pools.tensors(_result(slots, worker="inference-1"))
            for bad in ({"path": 3}, {**slots.spec.to_dict(), "slots": 1 << 40}, {**slots.spec.to_dict(), "slots": 0}):
                msg = _result(slots)
                msg.pool = bad
                with pytest.raises(MessageError):
                    pools.tensors(msg)
            msg = _result(slots)
            msg.outputs = [["out", "bogus", [2, 5]]]
            with pytest.raises(MessageError, match="dtype"):
                pools.tensors(msg)
            msg.outputs = [["out", "float32", [2, None]]]
            with pytest.raises(MessageError, match="shape"):
                pools.tensors(msg)
        finally:
            pools.close()
            slots.close()


def test_owner_gone_tells_a_dead_worker_from_a_live_one():
    assert not owner_gone(f"/proc/{os.getpid()}/fd/0")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not owner_gone(f"/proc/{zombie.pid}/fd/3") and time.monotonic() < deadline:
        time.sleep(0.01)                               # exited, not yet reaped: a zombie
    assert owner_gone(f"/proc/{zombie.pid}/fd/3")
    zombie.wait()
    assert owner_gone(f"/proc/{zombie.pid}/fd/3")    # reaped: its pid names no process any more
    assert not owner_gone("/dev/shm/ovstream-x-inference-0-1-outputs")   # a file: nothing to tell


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
