"""FrameLedger: exact membership, compact memory."""
from __future__ import annotations

import random

from engine.ledger import FrameLedger


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
