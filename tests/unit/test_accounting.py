"""engine/control/accounting.py: acks into the ledgers, the ends of streams and of the run, the marks."""
from __future__ import annotations

from engine.config import load_config
from engine.control.accounting import Accounting
from engine.core.results import FrameResult
from engine.io.streams import plan
from engine.observe.metrics import MetricsAggregator
from engine.protocol.messages import AckMsg


def _accounting(*sources: dict) -> Accounting:
    cfg = load_config(overrides={"sources": list(sources)})
    return Accounting(plan(cfg), cfg.streams, MetricsAggregator())


def test_acks_fill_the_ledgers_and_the_last_end_finishes_the_run():
    acc = _accounting({"uri": "data/samples", "name": "a"}, {"uri": "data/samples", "name": "b", "start": 5})
    assert acc.completed([0, 1]) == {"0": [], "1": [[0, 5]]}      # b's first frames are written elsewhere
    acc.on_ack(AckMsg([0, 1, 2], [3], stream=0), generation=0)
    acc.on_ack(AckMsg([2], stream=0), generation=0)                # a duplicate counts once
    assert acc.acked[0] == [3, 1] and acc.completed([0]) == {"0": [[0, 4]]}
    acc.on_ack(AckMsg([], stream=7), generation=0)                 # no such stream: ignored
    acc.on_ack(AckMsg([], stream=0, finished=True, generation=1), generation=0)   # a stale generation's end
    assert not acc.ended
    acc.on_ack(AckMsg([], stream=0, finished=True), generation=0)
    assert acc.ended == {0} and not acc.finished
    acc.end_stream(1)
    assert acc.finished


def test_results_written_before_a_crash_are_counted_once(tmp_path):
    acc = _accounting({"uri": "data/samples", "name": "a"})
    acc.on_ack(AckMsg([0], stream=0), generation=0)
    results = tmp_path / "results.jsonl"
    lines = [FrameResult.failed("a", i, "x.jpg", i, "inference", "boom").to_json() for i in (0, 1)]
    results.write_text("".join(f"{line}\n" for line in lines) + '{"torn')
    acc.recover(results)
    assert acc.acked[0] == [1, 1] and acc.completed([0]) == {"0": [[0, 2]]}


def test_replay_and_seen_marks():
    acc = _accounting({"uri": "data/samples", "name": "a"})
    acc.note_replay_marks({"mqtt_replay_from@0": 7, "mqtt_replay_from@9": 1, "other@0": 3})
    acc.note_seen({"a": 4, 5: 1})
    acc.note_seen({"a": 2})
    assert acc.replay_from == {"a": 7} and acc.api_seen == {"a": 4}
