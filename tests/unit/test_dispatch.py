"""Credit dispatch: work goes only to a worker with a free request; a dead worker's batches return."""
from __future__ import annotations

from engine.messages import CreditMsg, FrameRef
from workers.preprocessor import Batch, Dispatcher


def _batch(slot: int, frame_id: int) -> Batch:
    return Batch(slot, [FrameRef(frame_id, "x", 0)])


def test_no_credit_no_work_and_faster_worker_gets_more():
    d = Dispatcher()
    d.ready.extend(_batch(i, i) for i in range(6))
    assert d.next_assignment() is None                      # nobody has announced a request yet
    d.on_credit(CreditMsg("fast", 2, hello=True))
    d.on_credit(CreditMsg("slow", 1, hello=True))
    sent = [d.next_assignment() for _ in range(3)]
    assert [w for w, _ in sent].count("fast") == 2 and d.next_assignment() is None
    # the fast worker finishes both batches before the slow one finishes its one
    for worker, batch in sent:
        if worker == "fast":
            assert d.on_credit(CreditMsg("fast", 1, [batch.slot])) == [batch.slot]
    more = [d.next_assignment() for _ in range(2)]
    assert [w for w, _ in more] == ["fast", "fast"]


def test_worker_down_requeues_its_batches_first_in_frame_order():
    d = Dispatcher()
    d.on_credit(CreditMsg("a", 2, hello=True))
    d.on_credit(CreditMsg("b", 1, hello=True))
    d.ready.extend(_batch(i, i) for i in range(4))
    held = [d.next_assignment() for _ in range(3)]
    lost = sorted(b.frames[0].frame_id for w, b in held if w == "a")
    assert d.worker_down("a") == 2
    assert [b.frames[0].frame_id for b in list(d.ready)[:2]] == lost
    assert d.on_credit(CreditMsg("a", 1, [0])) == []        # late message from the dead instance


def test_hello_from_a_restarted_worker_requeues_what_the_old_one_held():
    d = Dispatcher()
    d.on_credit(CreditMsg("a", 1, hello=True))
    d.ready.append(_batch(0, 0))
    d.next_assignment()
    d.on_credit(CreditMsg("a", 1, hello=True))
    assert [b.slot for b in d.ready] == [0]
    assert d.next_assignment()[1].slot == 0
