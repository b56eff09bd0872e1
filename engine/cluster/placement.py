"""Where streams go: nodes by capacity, never more streams on a node than it sustains.

A node's capacity is ``floor(resource / per_stream)`` of the resource named by ``[cluster]
resource`` (a custom per-node resource such as ``ovstream_streams``, or ``CPU`` / ``GPU``).
Streams go, one at a time, to the node that would be least full after taking it (streams over
capacity), so nodes fill in proportion to their capacity; what fits nowhere waits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    """One alive node: its Ray id, a short label, how many streams it takes and holds now."""

    node_id: str
    label: str
    capacity: int
    used: int = 0

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)


def capacity(resources: dict[str, float], resource: str, per_stream: float) -> int:
    """Streams a node with ``resources`` sustains (a little slack for float sums: 3.9999 → 4)."""
    return max(0, math.floor(resources.get(resource, 0.0) / per_stream + 1e-9))


def assign(streams: list[str], nodes: list[Node]) -> dict[str, str]:
    """``{stream: node_id}`` for as many of ``streams`` (in order) as the nodes have room for."""
    used = {n.node_id: n.used for n in nodes}
    out: dict[str, str] = {}
    for stream in streams:
        open_nodes = [n for n in nodes if used[n.node_id] < n.capacity]
        if not open_nodes:
            break
        best = min(open_nodes, key=lambda n: ((used[n.node_id] + 1) / n.capacity, -n.capacity, n.label))
        out[stream] = best.node_id
        used[best.node_id] += 1
    return out
