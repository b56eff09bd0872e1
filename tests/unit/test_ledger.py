"""FrameLedger: exact membership, compact memory."""
from __future__ import annotations

import random

from engine.protocol.ledger import FrameLedger


def test_out_of_order_ids_collapse_into_the_watermark():
    ledger = FrameLedger()
    assert ledger.add([2, 0, 5]) == 3 and ledger.add([0, 2]) == 0
    assert ledger.ranges() == [[0, 1], [2, 3], [5, 6]] and len(ledger) == 3 and ledger.end() == 6
    ledger.add([1, 3, 4])
    assert ledger.ranges() == [[0, 6]] and ledger.low == 6 and 5 in ledger and 6 not in ledger


def test_memory_stays_bounded_by_the_out_of_order_window():
    ledger, ids = FrameLedger(), list(range(100_000))
    for start in range(0, len(ids), 64):          # shuffled within windows of 64, like frames in flight
        window = ids[start:start + 64]
        random.Random(start).shuffle(window)
        ledger.add(window)
        assert len(ledger._above) < 64
    assert ledger.ranges() == [[0, 100_000]]


def test_from_ranges_rebuilds_the_ledger_a_restarted_stage_gets():
    ledger = FrameLedger()
    ledger.add([0, 1, 2, 3, 7, 8, 10])
    again = FrameLedger.from_ranges(ledger.ranges())
    assert again.ranges() == [[0, 4], [7, 9], [10, 11]] and again.low == 4
    assert [i for i in range(12) if i in again] == [0, 1, 2, 3, 7, 8, 10] and again.end() == 11
    big = FrameLedger.from_ranges([[0, 10_000_000]])             # a day of a camera: one watermark
    assert big.low == 10_000_000 and not big._above and 9_999_999 in big and big.end() == 10_000_000
    assert FrameLedger.from_ranges([]).end() == 0


def test_settle_forgets_gaps_a_live_stream_gave_up_on():
    ledger = FrameLedger()
    ledger.add([0, 1, 3, 4, 5])                                   # frame 2 was lost with a crashed stage
    ledger.settle()
    assert ledger.ranges() == [[0, 6]] and ledger.end() == 6
    ledger.add([6, 8])
    ledger.settle()
    assert ledger.ranges() == [[0, 9]]
