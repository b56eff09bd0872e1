"""A tracking run end to end on the generated sequence: track ids on the records, events, a snapshot
per event, the line and zone counts in the report."""
from __future__ import annotations

import json

import cv2

from engine.core.results import read_events, read_results
from tests.conftest import run_ovstream
from tests.helpers.mot_sequence import make_sequence


def test_tracking_run_writes_ids_events_snapshots_and_counts(engine_env, tmp_path):
    frames = make_sequence().frames[:150]
    (tmp_path / "seq").mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / "seq" / f"{i:04d}.jpg"), frame)
    config = tmp_path / "tracking.toml"
    config.write_text(f"[[sources]]\nuri = '{tmp_path / 'seq'}'\nname = 'cam'\n"
                      "[model]\nname = 'face'\nscore_threshold = 0.3\n"
                      "[output]\nsnapshots = true\n[tracking]\nenabled = true\n"
                      "[[tracking.zones]]\nname = 'right'\nrelative = true\n"
                      "points = [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]\n", encoding="utf-8")
    result = run_ovstream(str(config), output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    records = list(read_results(result.output / "results.jsonl", strict=True))
    assert len(records) == len(frames) and all(r.size == (640, 480) for r in records)
    ids = {d.track_id for r in records for d in r.detections or () if d.track_id is not None}
    assert ids and ids == set(range(1, max(ids) + 1))                # 1, 2, 3 ... without gaps
    events = list(read_events(result.output / "events.jsonl"))
    assert {e.track_id for e in events if e.kind == "appeared"} == ids
    snapshots = sorted(p.name for p in (result.output / "snapshots" / "cam").glob("*.jpg"))
    assert snapshots == sorted(f"{e.frame_id}_{e.n}_{e.kind}_{e.track_id}.jpg" for e in events)
    entries = sum(1 for e in events if e.kind == "entered")
    report = json.loads((result.output / "report.json").read_text(encoding="utf-8"))
    counted = sum(a["value"] for a in report["analytics"] if a["kind"] == "zone_entries")
    assert counted == entries > 0
