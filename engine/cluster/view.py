"""The driver's one dashboard for the whole cluster: a row per engine (node) and per stream.

:func:`stream_row` folds a stream's finished segments and its running engine's latest status
into one :class:`~engine.observe.metrics.StreamRow`; :class:`ClusterView` holds those rows, the engines'
rows and the totals, and the existing dashboard helpers draw the streams (table, plain lines,
file progress). Nothing here computes while drawing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from engine.observe.dashboard import PREFIX, LiveView, format_plain, progress_view, streams_table, summary_head
from engine.observe.metrics import Snapshot, StreamRow, Totals


@dataclass(frozen=True)
class EngineRow:
    """One engine: its id, node, state, streams, and figures from its latest status."""

    engine: str
    node: str
    state: str                  # starting | running | finished | lost | stopped | failed
    streams: int
    fps: float = 0.0
    out: int = 0
    in_flight: int = 0
    cpu_percent: float = 0.0
    rss_mb: float = 0.0


@dataclass(frozen=True)
class ClusterView:
    """What the cluster dashboard draws: the cluster-wide snapshot plus the engines."""

    snapshot: Snapshot
    engines: tuple[EngineRow, ...] = ()
    nodes: int = 0
    waiting: int = 0            # streams waiting for room on a node
    events: tuple[str, ...] = field(default_factory=tuple)


def engine_row(engine: str, node: str, state: str, streams: int, status: dict | None) -> EngineRow:
    """An engine's row from its ``status.json`` (None before the first one)."""
    if not status:
        return EngineRow(engine, node, state, streams)
    acc = status.get("accounting", {})
    procs = status.get("processes", [])
    return EngineRow(engine, node, state, streams, fps=float(status.get("throughput_fps_recent", 0.0)),
                     out=int(acc.get("out", 0)) + int(acc.get("errors", 0)),
                     in_flight=int(acc.get("in_flight", 0)),
                     cpu_percent=sum(float(p.get("cpu_percent") or 0.0) for p in procs),
                     rss_mb=sum(float(p.get("rss_mib") or 0.0) for p in procs))


def stream_row(name: str, uri: str, kind: str, state: str, past: dict[str, int], start: int,
               current: dict | None) -> StreamRow:
    """One stream across its segments: ``past`` sums the finished segments (in, out, errors,
    drops, reconnects, duplicates), ``current`` is its running engine's row in status.json (a
    StreamRow dict) and ``start`` that segment's first frame id."""
    cur = StreamRow.from_dict(name, current) if current else None
    get = (lambda attr: getattr(cur, attr)) if cur else (lambda attr: 0)
    return StreamRow(
        name=name, uri=uri, kind=kind,
        state=state if state != "running" else cur.state if cur is not None else "starting",
        frames_in=past.get("in", 0) + get("frames_in"), frames_out=past.get("out", 0) + get("frames_out"),
        errors=past.get("errors", 0) + get("errors"), drops=past.get("drops", 0) + get("drops"),
        in_flight=get("in_flight"), fps=get("fps") if cur else 0.0, avg_fps=get("avg_fps") if cur else 0.0,
        reconnects=past.get("reconnects", 0) + get("reconnects"),
        duplicates=past.get("duplicates", 0) + get("duplicates"),
        expected=(start + cur.expected) if cur and cur.expected else past.get("expected", 0),
        latency=cur.latency if cur else None)


def totals_of(rows: list[StreamRow], elapsed_s: float) -> Totals:
    """The cluster's accounting: the streams' figures summed."""
    f_in, out, err, drops = (sum(getattr(r, a) for r in rows) for a in ("frames_in", "frames_out", "errors", "drops"))
    in_flight = sum(r.in_flight for r in rows)
    return Totals(frames_in=f_in, frames_out=out, errors=err, drops=drops,
                  duplicates=sum(r.duplicates for r in rows), in_flight=in_flight,
                  balanced=f_in == out + err + drops, fps=round(sum(r.fps for r in rows), 2),
                  avg_fps=round((out + err) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
                  reconnects=sum(r.reconnects for r in rows))


def engines_table(view: ClusterView) -> Table:
    table = Table(title=f"engines ({view.nodes} nodes)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("engine")
    table.add_column("node")
    table.add_column("state")
    for name in ("streams", "FPS", "done", "in-flight", "CPU%", "RSS MiB"):
        table.add_column(name, justify="right")
    styles = {"lost": "red", "failed": "red", "starting": "yellow", "finished": "dim", "stopped": "dim"}
    for e in view.engines:
        table.add_row(e.engine, e.node, e.state, str(e.streams), f"{e.fps:.1f}", str(e.out), str(e.in_flight),
                      f"{e.cpu_percent:.0f}", f"{e.rss_mb:.0f}", style=styles.get(e.state))
    return table


def render_cluster(view: ClusterView) -> RenderableType:
    snap = view.snapshot
    t = snap.totals
    head = Text(f"{snap.elapsed_s:.1f}s  {snap.state}  fps {t.fps:.1f}  frames in {t.frames_in} "
                f"ok {t.frames_out} err {t.errors} drop {t.drops} in-flight {t.in_flight}"
                + (f"  waiting for room: {view.waiting} streams" if view.waiting else ""))
    parts: list[RenderableType] = [head]
    progress = progress_view(snap)
    if progress is not None:
        parts.append(progress)
    parts += [engines_table(view), streams_table(snap)]
    parts += [Text(e, style="yellow") for e in view.events[-4:]]
    return Panel(Group(*parts), title="ovstream cluster", title_align="left", box=box.ROUNDED)


def format_cluster_plain(view: ClusterView) -> str:
    """The plain progress lines, then one line per engine."""
    lines = [format_plain(view.snapshot)]
    if view.waiting:
        lines.append(f"{PREFIX}   waiting for room on a node: {view.waiting} streams")
    lines += [f"{PREFIX}   engine {e.engine} on {e.node} {e.state} streams {e.streams} fps {e.fps:.1f} "
              f"done {e.out} in-flight {e.in_flight}" for e in view.engines]
    return "\n".join(lines)


class ClusterDashboard(LiveView[ClusterView]):
    """The dashboard of a cluster run, drawing a :class:`ClusterView`."""

    def _print_plain(self, snapshot: ClusterView) -> None:
        self._printed = snapshot
        self.console.print(format_cluster_plain(snapshot), markup=False, highlight=False, soft_wrap=True)

    def _renderable(self) -> RenderableType:
        view = self._snapshot
        return render_cluster(view) if view is not None else Text(f"{PREFIX} connecting…", style="dim")


def render_cluster_summary(report: dict, view: ClusterView) -> RenderableType:
    """Printed once at exit: the cluster's totals, the streams and the engines."""
    snap = Snapshot.from_dict(report)
    head = summary_head(snap, "cluster run summary")
    lost = [e for e in report.get("cluster", {}).get("events", []) if e.get("kind") == "engine_lost"]
    for e in lost:
        resumed = e.get("resumed_after_s")
        head.add_row("node lost", f"{e['engine']} on {e['node']} at {e['t']:.1f} s: {len(e['streams'])} stream(s) "
                                  f"moved" + (f", resumed after {resumed:.1f} s" if resumed is not None else ""))
    return Group(head, streams_table(snap), engines_table(view))
