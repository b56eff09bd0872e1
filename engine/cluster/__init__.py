"""Cluster mode: the streams of one config spread over the nodes of a Ray cluster.

The driver (:mod:`engine.cluster.driver`) places the streams on the nodes by their capacity
(:mod:`~engine.cluster.placement`), starts one engine per node share as a Ray actor
(:mod:`~engine.cluster.host`: the normal ``ovstream run`` supervisor and stage processes on that
node), watches them, moves the streams of a dead engine to the nodes left, and at the end joins
what every engine wrote into one ``results.jsonl`` and one report (:mod:`~engine.cluster.segments`).
Ray is imported only here, and only when a run asks for a cluster.
"""
