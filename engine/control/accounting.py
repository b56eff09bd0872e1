"""Run accounting: what the sinks have written of each stream, and when a stream and the run are done.

Every stream has a :class:`~engine.protocol.ledger.FrameLedger` of the frame ids its sinks have
written (acknowledged by the postprocessor, or found in ``results.jsonl`` after a crash); a
restarted stage resumes from the ledgers, so every file frame is written exactly once. Beside
them: the counts of results and error records, the marks a restarted stage resumes or replays
from (a live stream's next frame id, the MQTT broker's unconfirmed frames, a library pipeline
iterator's first missing result), and which streams have ended.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from engine.config import SourceConfig
from engine.io.sinks import JsonlSink
from engine.io.streams import Layout, StreamSpec
from engine.observe.metrics import MetricsAggregator, split_stream_key
from engine.protocol.ledger import FrameLedger
from engine.protocol.messages import AckMsg


class Accounting:
    """The ledgers and marks of one run's streams (indexed by stream id, as the layout's)."""

    def __init__(self, layout: Layout, sources: list[SourceConfig], metrics: MetricsAggregator) -> None:
        self.layout = layout
        self.metrics = metrics
        self.ledgers: list[FrameLedger] = []
        self.acked: list[list[int]] = []        # per stream: results, error records
        self.ended: set[int] = set()
        self.finished = False                   # every stream has ended
        self.resume: dict[str, int] = {}        # live stream → next frame id for a restarted decoder
        self.replay_from: dict[str, int] = {}   # MQTT: stream → lowest frame id the broker has not confirmed
        self.api_seen: dict[str, int] = {}      # library pipeline: stream → first frame id its iterator lacks
        for spec, src in zip(layout.streams, sources):
            self.add_stream(spec, first=src.start)

    def add_stream(self, spec: StreamSpec, first: int = 0) -> None:
        """Account for one more stream; one that starts later (``[source] start``) has its earlier
        frames written elsewhere."""
        self.ledgers.append(FrameLedger.from_ranges([[0, first]] if first else []))
        self.acked.append([0, 0])
        self.metrics.add_stream(spec.name, spec.uri, spec.kind, first=first)
        self.finished = False                   # (a service's pipeline takes streams after every one ended)

    def completed(self, streams: list[int]) -> dict[str, list[list[int]]]:
        """The id ranges written of ``streams``, as a stage context carries them."""
        return {str(sid): self.ledgers[sid].ranges() for sid in streams}

    def on_ack(self, msg: AckMsg, generation: int) -> None:
        """Frames written, whatever the generation; the stream's end only from this generation's
        postprocessor."""
        if not 0 <= msg.stream < len(self.ledgers):
            return
        self._count(msg.stream, msg.frame_ids, msg.error_ids)
        if self.layout.streams[msg.stream].live:    # acks come in order; a gap below is given up
            self.ledgers[msg.stream].settle()
        if msg.finished and msg.generation == generation:
            self.end_stream(msg.stream)

    def recover(self, results: Path) -> None:
        """After a crash: count the records of ``results.jsonl`` written but not acknowledged."""
        names = {st.name: st.sid for st in self.layout.streams}
        for name, (ok, errors) in JsonlSink.recover(results).items():
            if name in names:
                self._count(names[name], ok, errors)

    def _count(self, sid: int, ok: Iterable[int], errors: Iterable[int]) -> None:
        counts = self.acked[sid]
        counts[0] += self.ledgers[sid].add(ok)
        counts[1] += self.ledgers[sid].add(errors)
        self.metrics.set_stream_acks(sid, *counts)

    def end_stream(self, sid: int) -> None:
        self.ended.add(sid)
        self.metrics.end_stream(sid)
        self.finished = len(self.ended) == len(self.ledgers)

    def note_replay_marks(self, gauges: dict) -> None:
        """The MQTT sink's per-stream marks (``mqtt_replay_from@<stream>``): where a restarted
        postprocessor publishes results.jsonl again from."""
        for key, value in gauges.items():
            parsed = split_stream_key(key)
            if parsed and parsed[0] == "mqtt_replay_from" and isinstance(value, int) \
                    and 0 <= parsed[1] < len(self.layout.streams):
                self.replay_from[self.layout.streams[parsed[1]].name] = value

    def note_seen(self, marks: dict) -> None:
        """A library pipeline's iterator holds every result below these marks (stream name → frame id)."""
        for name, mark in marks.items():
            if isinstance(name, str) and isinstance(mark, int):
                self.api_seen[name] = max(self.api_seen.get(name, 0), mark)
