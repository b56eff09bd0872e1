"""Cluster mode: the streams of one config spread over the nodes of a Ray cluster.

The driver (:mod:`engine.cluster.driver`) asks every node which of the run's files it can read,
places the streams on the nodes by their capacity (:mod:`~engine.cluster.placement`), starts one
engine per node share as a Ray actor (:mod:`~engine.cluster.host`: the normal ``ovstream run``
supervisor and stage processes on that node, in a folder of that node), pulls every engine's
records through Ray in bounded batches and writes each frame once into the one ``results.jsonl``
(:mod:`~engine.cluster.segments`), watches the engines, and moves the streams of a dead engine
to the nodes left, each resuming after the last record the driver holds. No filesystem is shared.
Ray is imported only here, and only when a run asks for a cluster.
"""
