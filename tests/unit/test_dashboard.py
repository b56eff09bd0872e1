"""engine.observe.dashboard: rich views of a snapshot, and the plain-line mode used off a terminal."""
from __future__ import annotations

import io
import re

from rich.console import Console

from engine.observe.dashboard import Dashboard, format_plain, render, render_summary
from engine.observe.metrics import MetricsAggregator, Snapshot
from engine.protocol.messages import StatsMsg


def make_snapshot(now: float = 3.2) -> Snapshot:
    agg = MetricsAggregator(sample_processes=False)
    agg.start(now=0.0)
    for k in range(1, 9):
        t = now - 2.0 + k * 0.25
        agg.ingest(StatsMsg(process="decoder", role="decoder", pid=11,
                            counters={"frames_read": 15 * k, "drops": 0, "decode_errors": 2},
                            gauges={"raw_slots": 8, "raw_free": 3},
                            latency_ms={"decode": [2.0]}), now=t)
        for i, per in ((0, 6), (1, 5)):
            agg.ingest(StatsMsg(process=f"inference-{i}", role="inference", pid=20 + i,
                                device="CPU", counters={"frames": per * k, "batches": per * k},
                                gauges={"nireq": 4, "in_flight": 2 + i},
                                latency_ms={"inference": [8.0 + 4 * i]}), now=t)
        agg.ingest(StatsMsg(process="postprocessor", role="postprocessor", pid=30,
                            counters={"results": 12 * k + 2, "errors": 2},
                            gauges={"reorder": 1},
                            latency_ms={"end_to_end": [12.3, 12.3, 20.1]}), now=t)
    agg.note_restart("inference-1")
    agg.set_state("running")
    return agg.snapshot(now=now)


def recording_console(terminal: bool = False) -> Console:
    return Console(record=True, width=140, file=io.StringIO(), force_terminal=terminal,
                   color_system=None)


def test_render_shows_key_figures() -> None:
    console = recording_console()
    console.print(render(make_snapshot()))
    text = console.export_text()
    for needle in ("stages (ms)", "end_to_end", "inference", "CPU#0", "CPU#1", "20.1",
                   "devices", "2/4", "3/4", "processes", "inference-1", "queues",
                   "decoder→preprocessor", "5/8", "in 120 = out 98 + errors 2 + drops 0"):
        assert needle in text, needle


def test_render_summary_from_snapshot_or_report() -> None:
    snap = make_snapshot()
    for source in (snap, snap.to_dict()):
        console = recording_console()
        console.print(render_summary(source))
        text = console.export_text()
        assert "run summary" in text and "31.25 FPS" in text and "CPU#1" in text
        assert "in 120 = out 98 + errors 2 + drops 0 + in-flight 20" in text


def test_format_plain() -> None:
    line = format_plain(make_snapshot())
    assert line.startswith("[ovstream] 3.2s  frames 120/100 ok 98 err 2 drop 0 in-flight 20  fps ")
    assert re.search(r"fps 48\.0 \(CPU#0 24\.0, CPU#1 20\.0\)  e2e p50 1\d\.\dms p95 20\.\dms$",
                     line), line


def test_plain_mode_off_terminal_prints_lines_at_interval() -> None:
    clock = iter([0.0, 0.5, 1.0, 2.1, 2.5, 3.0]).__next__
    console = recording_console(terminal=False)
    dash = Dashboard(console=console, plain_interval_s=2.0, clock=clock)
    assert not dash.live_mode
    snap = make_snapshot()
    with dash:
        for _ in range(5):
            dash.update(snap)
        last = make_snapshot(now=4.0)
        dash.update(last)                               # t=3.0: not due; printed at stop
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 3, lines                       # t=0, t=2.1, then the final one at stop
    assert all(line.startswith("[ovstream] ") for line in lines)
    assert lines[-1].startswith("[ovstream] 4.0s")


def test_live_mode_on_terminal() -> None:
    console = recording_console(terminal=True)
    dash = Dashboard(refresh_hz=1.0, console=console)
    assert dash.live_mode and dash.refresh_hz == 2.0
    dash.start()
    dash.update(make_snapshot())
    dash.stop()
    assert "CPU#1" in console.export_text()


def test_narrow_console_stacks_tables() -> None:
    console = Console(record=True, width=90, file=io.StringIO(), color_system=None)
    console.print(render(make_snapshot()))
    text = console.export_text()
    assert "inference-1" in text and "postprocessor reorder" in text and "…" not in text


def many_streams_snapshot(n: int = 40) -> Snapshot:
    agg = MetricsAggregator(sample_processes=False)
    agg.start(now=0.0)
    for i in range(n):
        agg.add_stream(f"cam{i:02d}", f"rtsp://127.0.0.1/cam{i}", "live" if i % 2 else "file")
    gauges = {f"next_frame_id@{i}": 50 for i in range(n)}
    gauges.update({f"state@{i}": 2 if i % 2 else 1 for i in range(n)})
    gauges.update({f"expected@{i}": 0 if i % 2 else 100 for i in range(n)})
    gauges["state@7"] = 5                               # failed
    gauges["state@9"] = 3                               # reconnecting
    agg.ingest(StatsMsg(process="decoder-0", role="decoder", pid=11, gauges=gauges,
                        counters={"drops@13": 9}), now=1.0)
    for i in range(n):
        agg.set_stream_acks(i, 10, 0, now=0.5)
        agg.set_stream_acks(i, 40 + i % 5, 0, now=1.5)
    return agg.snapshot(now=1.6)


def test_streams_table_stays_short_with_many_streams_worst_first() -> None:
    snap = many_streams_snapshot(40)
    console = recording_console(terminal=True)
    console.print(render(snap))
    text = console.export_text()
    rows = [line for line in text.splitlines() if re.search(r"\bcam\d\d\b", line)]
    assert len(rows) == 11                              # 11 streams shown, one line summarises the rest
    assert "cam07" in rows[0] and "failed" in rows[0]
    assert "cam09" in rows[1] and "reconnecting" in rows[1]
    assert "cam13" in rows[2]                           # the stream that drops frames comes next
    assert "29 more:" in text and "files" in text and "ETA" in text


def test_plain_lines_have_per_stream_summaries() -> None:
    text = format_plain(many_streams_snapshot(3))
    lines = text.splitlines()
    assert len(lines) == 4 and all(line.startswith("[ovstream]") for line in lines)
    assert any("cam01 live" in line for line in lines[1:])
    many = format_plain(many_streams_snapshot(40)).splitlines()
    assert len(many) == 6 and "cam07 failed" in many[1] and "36 more:" in many[-1]


def test_plain_mode_wants_a_snapshot_only_when_a_line_is_due() -> None:
    now = [100.0]
    board = Dashboard(4, console=recording_console(), plain=True, clock=lambda: now[0])
    assert board.due()                                  # the first line
    board.update(make_snapshot())
    assert not board.due()
    now[0] += board.plain_interval_s - 0.01
    assert not board.due()
    now[0] += 0.02
    assert board.due()
    assert Dashboard(4, console=recording_console(terminal=True)).due()     # the live view: always
