"""Plane geometry of the zones and lines (image coordinates: x right, y down), shared by the config's
checks and the analytics: which side of a line a point is on, whether two segments cross, whether a
polygon crosses itself, whether a point is inside it."""
from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]


def side(a: Point, b: Point, p: Point) -> float:
    """> 0 when ``p`` is right of the line a→b as seen on the image (y down), < 0 left, 0 on it."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether segments a-b and c-d cross at a point inside both (touching at an end does not count)."""
    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


def passes(a: Point, b: Point, p: Point, q: Point) -> bool:
    """Whether a step from ``p`` to ``q``, on opposite sides of the line a→b, goes through the segment
    a-b (its ends included)."""
    return side(a, b, p) * side(a, b, q) < 0 and side(p, q, a) * side(p, q, b) <= 0


def self_intersecting(points: Sequence[Point]) -> bool:
    """Whether two edges of the closed polygon ``points`` that do not share a corner cross."""
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue                      # neighbours through the closing edge
            if segments_cross(*edges[i], *edges[j]):
                return True
    return False


def area(points: Sequence[Point]) -> float:
    """The polygon's area (shoelace)."""
    n = len(points)
    return abs(sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
                   for i in range(n))) / 2


def inside(points: Sequence[Point], p: Point) -> bool:
    """Whether ``p`` is inside the polygon (even-odd rule; a point on an edge may go either way)."""
    x, y = p
    result = False
    n = len(points)
    for i in range(n):
        (x1, y1), (x2, y2) = points[i], points[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            result = not result
    return result
