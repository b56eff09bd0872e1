"""Line and zone counts from the postprocessor's gauges to the snapshot, the report, Prometheus and the
dashboard's stream table; a restarted postprocessor (rebuilt counts) is not added twice."""
from __future__ import annotations

import io

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from rich.console import Console

from engine.analytics.streams import Tracking
from engine.observe.dashboard import analytics_text, render
from engine.observe.exporter import SnapshotCollector
from engine.observe.metrics import MetricsAggregator, Snapshot, analytics_key
from engine.protocol.messages import StatsMsg
from tests.unit.test_zones import _cfg, _script


def _gauges() -> dict[str, int]:
    tracking = Tracking(_cfg())
    for record in _script():
        tracking.step(record)
    return {analytics_key(kind, where, direction, label, 0): value
            for kind, where, direction, label, value in tracking.counts()["cam"]}


def _snapshot() -> Snapshot:
    agg = MetricsAggregator(sample_processes=False)
    agg.add_stream("cam", "v.mp4", "file")
    agg.start(now=0.0)
    gauges = _gauges()
    for pid, gen in ((300, 0), (301, 1)):              # the second instance after a restart: same counts
        agg.ingest(StatsMsg(process="postprocessor", role="postprocessor", pid=pid, generation=gen,
                            counters={"results": 100}, gauges=gauges), now=0.5 + gen)
    return agg.snapshot(now=2.0)


def test_counts_reach_prometheus_once():
    snap = _snapshot()
    collector = SnapshotCollector()
    collector.publish(snap)
    registry = CollectorRegistry()
    registry.register(collector)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    cam = ("stream", "cam")
    assert samples[("ovstream_line_crossings_total",
                    (("class", "person"), ("direction", "in"), ("line", "gate"), cam))] == 1
    assert samples[("ovstream_line_crossings_total",
                    (("class", "person"), ("direction", "out"), ("line", "gate"), cam))] == 1
    assert samples[("ovstream_zone_objects", (("class", "person"), cam, ("zone", "box")))] == 1
    assert samples[("ovstream_zone_entries_total", (("class", "person"), cam, ("zone", "box")))] == 1
    assert Snapshot.from_dict(snap.to_dict()).analytics == snap.analytics     # the report keeps them


def test_the_stream_table_shows_lines_and_zones():
    snap = _snapshot()
    assert analytics_text(snap.analytics, "cam") == "gate in 1 out 1  box 1 now (1 in)"
    console = Console(file=io.StringIO(), width=200)
    console.print(render(snap))
    assert "gate in 1 out 1" in console.file.getvalue()
