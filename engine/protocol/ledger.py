"""FrameLedger: which frame ids are written, in memory that does not grow with the stream.

Ids below a watermark are all done; only the ids written out of order above it are kept, and
those are bounded by the frames in flight. The supervisor resumes restarted stages from it.
"""
from __future__ import annotations

from collections.abc import Iterable


class FrameLedger:
    """A set of non-negative frame ids stored as ``[0, low)`` plus the few ids above ``low``."""

    def __init__(self) -> None:
        self.low = 0
        self._above: set[int] = set()

    @classmethod
    def from_ranges(cls, ranges: Iterable[Iterable[int]]) -> FrameLedger:
        """The ledger of :meth:`ranges` output (as a restarted stage gets it): ``[0, b)`` costs nothing."""
        ledger = cls()
        for a, b in ranges:
            if a <= ledger.low:
                ledger.low = max(ledger.low, b)
            else:
                ledger._above.update(range(a, b))
        ledger.add(())
        return ledger

    def settle(self) -> None:
        """Take every id below the highest written as settled: a live stream never goes back for a
        frame it gave up, so its ledger stays one watermark however long it runs."""
        self.low, self._above = self.end(), set()

    def add(self, ids: Iterable[int]) -> int:
        """Record ``ids`` as written; returns how many were new."""
        new = 0
        for i in ids:
            if i >= self.low and i not in self._above:
                self._above.add(i)
                new += 1
        while self.low in self._above:
            self._above.remove(self.low)
            self.low += 1
        return new

    def __contains__(self, frame_id: int) -> bool:
        return frame_id < self.low or frame_id in self._above

    def __len__(self) -> int:
        return self.low + len(self._above)

    def end(self) -> int:
        """One past the highest id written (0 when empty)."""
        return max(self._above, default=self.low - 1) + 1

    def ranges(self) -> list[list[int]]:
        """Half-open ``[a, b)`` ranges covering exactly the written ids, in order."""
        out = [[0, self.low]] if self.low else []
        for i in sorted(self._above):
            if out and out[-1][1] == i:
                out[-1][1] = i + 1
            else:
                out.append([i, i + 1])
        return out
