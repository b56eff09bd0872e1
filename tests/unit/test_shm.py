"""SlotPool and FreeList: shared pixels between processes, bounded, cleaned up."""
from __future__ import annotations

import multiprocessing as mp
import uuid

import numpy as np
import pytest

from engine.protocol.shm import TENSOR_ALIGN, FreeList, SlotPool, leftover_segments, tensor_offsets


@pytest.fixture
def spec():
    spec = SlotPool.create(uuid.uuid4().hex[:8], "test", 100 * 100 * 3, 4)
    yield spec
    SlotPool.unlink(spec)


def _fill(spec, slot: int, value: int) -> None:
    pool = SlotPool(spec)
    pool.view(slot, (100, 100, 3))[...] = value
    pool.close()


def test_slots_are_page_aligned_and_shared_across_processes(spec):
    assert spec.slot_bytes % 4096 == 0 and spec.slot_bytes >= 30000
    proc = mp.get_context("spawn").Process(target=_fill, args=(spec, 2, 77))
    proc.start()
    proc.join(30)
    pool = SlotPool(spec)
    assert (pool.view(2, (100, 100, 3)) == 77).all()
    assert (pool.view(1, (100, 100, 3)) == 0).all()


def test_view_refuses_what_does_not_fit(spec):
    pool = SlotPool(spec)
    with pytest.raises(ValueError, match="slot holds"):
        pool.view(0, (200, 200, 3))
    with pytest.raises(IndexError):
        pool.view(4, (1,))


def test_tensors_of_a_slot_are_aligned_views_that_do_not_overlap(spec):
    layout = [("float32", [1, 10, 4]), ("int64", [1, 3]), ("uint8", [5])]
    offsets, total = tensor_offsets(layout)
    assert offsets == [0, 192, 256] and total == 320 and all(o % TENSOR_ALIGN == 0 for o in offsets)
    pool = SlotPool(spec)
    boxes, counts, flags = pool.tensors(3, layout)
    boxes[...], counts[...], flags[...] = 1.5, -7, 255
    again = SlotPool(spec).tensors(3, layout)                 # another mapping sees the same memory
    assert (again[0] == 1.5).all() and (again[1] == -7).all() and (again[2] == 255).all()
    assert again[1].dtype == np.int64 and again[0].shape == (1, 10, 4)
    assert (pool.view(2, (spec.slot_bytes,)) == 0).all()      # the neighbouring slot untouched
    with pytest.raises(ValueError, match="do not fit"):
        pool.tensors(0, [("float32", [spec.slot_bytes])])
    with pytest.raises(IndexError):
        pool.tensors(4, layout)


def test_pool_has_no_name_in_dev_shm_and_unlink_frees_it(spec):
    import os
    assert not any(spec.path.endswith(p.name) for p in leftover_segments())   # an anonymous memfd
    assert os.path.exists(spec.path)
    SlotPool.unlink(spec)
    assert not os.path.exists(spec.path)


def test_free_list_backpressure_and_duplicate_release():
    free = FreeList(2)
    a, b = free.acquire(), free.acquire()
    assert {a, b} == {0, 1} and free.acquire() is None
    assert free.release(a) and not free.release(a)          # a second release of one slot is refused
    assert free.acquire() == a and free.free == 0
    assert not free.release(99)
