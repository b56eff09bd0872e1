"""Small, pure helpers for benchmark figures: medians of repeats, percentiles, ratios."""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median and range of repeated measurements of one figure."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread | None:
        """The spread of the finite values, or None when there are none."""
        vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not vals:
            return None
        return cls(statistics.median(vals), min(vals), max(vals), len(vals))

    def to_dict(self) -> dict:
        return {"median": round(self.median, 3), "min": round(self.min, 3), "max": round(self.max, 3), "n": self.n}


def median_of(values: Iterable[float | None]) -> float:
    """The median of the finite values of a figure the caller knows was measured at least once."""
    spread = Spread.of(values)
    assert spread is not None, "no finite value to take the median of"
    return spread.median


def percentile(values: Iterable[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100) by linear interpolation, or None for no values."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0]
    k = (len(vals) - 1) * min(max(p, 0.0), 100.0) / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number for a table cell; ``—`` when missing."""
    if value is None:
        return "—"
    return f"{value:.{digits}f}{unit}"
