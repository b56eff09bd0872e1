"""The postprocessor's reorder buffer: one stream's records leave in frame order, each id once,
skipping what is already written; a live stream gives up a frame lost for good."""
from __future__ import annotations

import time

from engine.protocol.ledger import FrameLedger
from engine.protocol.messages import FrameRef
from workers.postprocessor import LIVE_GAP_S, Reorder


def _ref(frame_id: int) -> FrameRef:
    return FrameRef(frame_id, "x.mp4", frame_id)


def _add(reorder: Reorder, *ids: int) -> list[bool]:
    return [reorder.add({"frame_id": i}, _ref(i)) for i in ids]


def _ids(ready: list[tuple[dict, FrameRef]]) -> list[int]:
    assert all(record["frame_id"] == ref.frame_id for record, ref in ready)    # each record with its frame
    return [ref.frame_id for _, ref in ready]


def test_records_leave_in_frame_order_once_every_lower_id_is_there():
    reorder = Reorder(FrameLedger())
    _add(reorder, 2, 1)
    assert reorder.pop_ready(live=False) == []               # frame 0 is missing: nothing may go
    _add(reorder, 0)
    assert _ids(reorder.pop_ready(live=False)) == [0, 1, 2]
    assert reorder.next_id == 3 and not reorder.pending
    _add(reorder, 4)
    assert reorder.pop_ready(live=False) == []


def test_a_duplicate_is_refused_whether_waiting_written_or_already_done():
    reorder = Reorder(FrameLedger.from_ranges([[0, 2], [5, 6]]))  # a restart: 0, 1 and 5 are written
    assert reorder.next_id == 2
    assert _add(reorder, 3, 3) == [True, False]              # waiting already
    assert _add(reorder, 1, 5) == [False, False]             # written before the restart
    _add(reorder, 2)
    assert _ids(reorder.pop_ready(live=False)) == [2, 3]
    assert _add(reorder, 2) == [False]                       # written just now
    _add(reorder, 4)
    assert _ids(reorder.pop_ready(live=False)) == [4]        # then 5 is skipped: done before
    assert reorder.next_id == 6


def test_a_stream_is_finished_once_its_total_is_known_and_written():
    reorder = Reorder(FrameLedger())
    _add(reorder, 0, 1)
    reorder.pop_ready(live=False)
    assert not reorder.finished                              # its end has not come yet
    reorder.total = 3
    assert not reorder.finished
    _add(reorder, 2)
    assert not reorder.finished                              # frame 2 waits, not written
    reorder.pop_ready(live=False)
    assert reorder.finished


def test_an_empty_stream_and_one_written_before_a_restart_are_finished_at_once():
    empty = Reorder(FrameLedger())
    empty.total = 0
    assert empty.finished
    done = Reorder(FrameLedger.from_ranges([[0, 4]]))
    done.total = 4
    assert done.pop_ready(live=False) == [] and done.finished


def test_a_live_stream_gives_up_a_lost_frame_after_the_gap_and_a_file_never_does():
    for live in (True, False):
        reorder = Reorder(FrameLedger())
        _add(reorder, 0, 2, 3)
        assert _ids(reorder.pop_ready(live)) == [0]          # 1 is missing, and it is recent
        record, ref, _ = reorder.pending[2]
        reorder.pending[2] = (record, ref, time.monotonic() - LIVE_GAP_S - 1)   # 2 has waited too long
        assert _ids(reorder.pop_ready(live)) == ([2, 3] if live else [])
        if not live:
            _add(reorder, 1)                                 # a file's frame always comes
            assert _ids(reorder.pop_ready(live)) == [1, 2, 3]
