"""Credit dispatch: work goes only to a worker with a free request; a batch stays held until the
postprocessor has its result, and a dead worker's unconfirmed batches return to the queue."""
from __future__ import annotations

from engine.protocol.messages import CreditMsg, FrameRef
from workers.preprocessor import Batch, Dispatcher, FairQueue


def _batch(slot: int, frame_id: int) -> Batch:
    return Batch(slot, [FrameRef(frame_id, "x", 0)])


def test_no_credit_no_work_and_the_faster_worker_gets_more():
    d = Dispatcher()
    d.ready.extend(_batch(i, i) for i in range(6))
    assert d.next_assignment() is None                      # nobody has announced a request yet
    d.on_credit(CreditMsg("fast@1", 2))
    d.on_credit(CreditMsg("slow@2", 1))
    sent = [d.next_assignment() for _ in range(3)]
    assert [w for w, _ in sent].count("fast@1") == 2 and d.next_assignment() is None
    for worker, batch in sent:                              # fast's two results reached the postprocessor
        if worker == "fast@1":                              # before slow's one: fast gets the next two
            d.release(batch.batch_id)
    assert [d.next_assignment()[0] for _ in range(2)] == ["fast@1", "fast@1"]
    assert d.next_assignment() is None


def test_a_credit_comes_back_with_the_release_of_its_batch_only_once():
    d = Dispatcher()
    d.on_credit(CreditMsg("a@1", 1))
    d.ready.extend([_batch(1, 0), _batch(2, 1)])
    _, first = d.next_assignment()
    assert d.next_assignment() is None                      # its one request is busy
    d.release(first.batch_id)
    d.release(first.batch_id)                               # a duplicate release returns no second credit
    assert d.next_assignment() is not None and d.credits["a@1"] == 0


def test_slots_come_back_only_by_their_dispatch_id():
    d = Dispatcher()
    d.on_credit(CreditMsg("a@1", 2))
    d.ready.extend([_batch(7, 0), _batch(8, 1)])
    (_, first), (_, second) = d.next_assignment(), d.next_assignment()
    assert first.batch_id != second.batch_id
    assert d.release(first.batch_id) == 7
    assert d.release(first.batch_id) is None                # a duplicate release frees nothing


def test_worker_down_requeues_unconfirmed_batches_first_in_frame_order():
    d = Dispatcher()
    d.on_credit(CreditMsg("a@1", 3))
    d.on_credit(CreditMsg("b@2", 1))
    d.ready.extend(_batch(i, i) for i in range(5))
    held = [d.next_assignment() for _ in range(4)]
    on_a = [b for w, b in held if w == "a@1"]
    d.release(on_a[0].batch_id)                             # that result reached the postprocessor
    assert d.worker_down("a@1") == 2
    assert [b.frames[0].frame_id for b in list(d.ready)[:2]] == sorted(b.frames[0].frame_id for b in on_a[1:])
    d.release(on_a[1].batch_id)                             # a late release of a requeued batch
    assert "a@1" not in d.credits


def test_a_requeued_batch_is_released_only_by_its_new_dispatch():
    d = Dispatcher()
    d.on_credit(CreditMsg("inference-0@100", 1))
    d.ready.append(_batch(3, 3))
    _, batch = d.next_assignment()
    old_id = batch.batch_id
    d.on_credit(CreditMsg("inference-0@200", 2))     # restarted before the down arrived
    assert [b.slot for b in d.ready] == [3]
    assert d.worker_down("inference-0@100") == 0                 # the supervisor's late notice
    worker, again = d.next_assignment()
    assert worker == "inference-0@200" and again.batch_id != old_id
    assert d.release(old_id) is None and d.release(again.batch_id) == 3


# ---- the fair scheduler across streams --------------------------------------------------------

def _frame(stream: int, frame_id: int, epoch: int = 0) -> FrameRef:
    return FrameRef(frame_id, f"s{stream}", frame_id, stream=stream, epoch=epoch)


def test_fair_queue_gives_every_waiting_stream_a_turn_per_round():
    q = FairQueue()
    for i in range(50):                                   # a fast file stream has queued 50 frames
        q.push(_frame(0, i))
    q.push(_frame(1, 0))                                  # then a camera frame arrives
    q.push(_frame(2, 0))
    first = [q.pop() for _ in range(3)]
    assert sorted(r.stream for r in first) == [0, 1, 2]   # the camera waits one round, not 50 frames
    q.push(_frame(1, 1))
    taken = [q.pop() for _ in range(4)]
    assert [r.stream for r in taken].count(1) == 1 and len(q) == 46
    rest = [q.pop() for _ in range(len(q))]
    assert q.pop() is None and not q
    by_stream: dict[int, list[int]] = {}
    for r in first + taken + rest:
        by_stream.setdefault(r.stream, []).append(r.frame_id)
    assert all(ids == sorted(ids) for ids in by_stream.values())          # each stream in its own order
    assert by_stream[0] == list(range(50))


def test_fair_queue_drops_only_a_dead_decoders_frames():
    q = FairQueue()
    for i in range(3):
        q.push(_frame(0, i, epoch=0))
        q.push(_frame(1, i, epoch=0))
    q.push(_frame(0, 3, epoch=1))                         # already from the successor
    assert q.drop({0}, below_epoch=1) == 3
    assert q.depth(0) == 1 and q.depth(1) == 3
    assert [(r.stream, r.frame_id) for r in (q.pop(), q.pop(), q.pop(), q.pop())] == [(0, 3), (1, 0), (1, 1), (1, 2)]
