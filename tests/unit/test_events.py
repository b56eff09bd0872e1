"""events.jsonl across a crash between flushing the records and their events: the restarted
postprocessor writes the missing events, once, from its trackers' replay of results.jsonl."""
from __future__ import annotations

from engine.analytics.streams import Tracking
from engine.core.results import Event, read_events
from engine.io.events import EventSink
from engine.io.sinks import JsonlSink
from tests.unit.test_zones import _cfg, _script
from workers.postprocessor import rebuild_tracks


def test_events_lost_with_the_process_are_written_once_after_a_restart(tmp_path):
    tracking = Tracking(_cfg())
    results, events = JsonlSink(tmp_path / "results.jsonl"), EventSink(tmp_path / "events.jsonl")
    made: list[Event] = []
    for record in _script():
        record, found = tracking.step(record)
        results.write(record)
        made += found
    results.close()
    for event in made[:4]:                          # died with the rest unflushed, one line torn
        events.write_event(event)
    events.close()
    with open(tmp_path / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write(made[4].to_json()[:20])
    known = EventSink.recover(tmp_path / "events.jsonl")
    assert known == {e.event_id for e in made[:4]}
    again = EventSink(tmp_path / "events.jsonl", append=True)
    rebuild_tracks(Tracking(_cfg()), tmp_path / "results.jsonl", known, [again])
    again.close()
    written = list(read_events(tmp_path / "events.jsonl"))
    assert [e.event_id for e in written] == [e.event_id for e in made]
    assert [(e.kind, e.track_id, e.where) for e in written] == [(e.kind, e.track_id, e.where) for e in made]
