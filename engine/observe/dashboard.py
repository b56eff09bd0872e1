"""The live view: draws a metrics :class:`~engine.observe.metrics.Snapshot`, never computes one.

On a terminal a rich ``Live`` redraws the latest snapshot ``refresh_hz`` times a second from its
own thread; :meth:`Dashboard.update` only swaps the reference. Anywhere else (pipes, CI, tests,
``--no-dashboard``) a plain progress line and per-stream summary lines are printed every
``plain_interval_s``. :func:`render_summary` is the table printed once at exit.

With many streams the per-stream views stay short: the worst streams first (failed,
reconnecting, dropping or failing frames, slowest), the rest folded into one summary row.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine.observe.metrics import ALL, AnalyticsRow, SinkRow, Snapshot, StageRow, StreamRow, Totals

PREFIX = "[ovstream]"
STREAM_ROWS = 12              # per-stream rows shown before the rest are summarised
PLAIN_STREAM_LINES = 8        # plain mode: one line per stream up to this many, else the worst few
_STATE_RANK = {"failed": 0, "reconnecting": 1, "starting": 2, "live": 3, "running": 3, "ended": 4}


S = TypeVar("S")


class LiveView(Generic[S]):
    """Shows the latest view of type ``S`` live on a terminal, as periodic plain lines elsewhere;
    a subclass says how one is drawn (:meth:`_renderable`) and printed (:meth:`_print_plain`)."""

    def __init__(self, refresh_hz: float = 4.0, console: Console | None = None,
                 plain_interval_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 plain: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.refresh_hz = max(refresh_hz, 2.0)
        self.plain_interval_s = plain_interval_s
        self.live_mode = self.console.is_terminal and not plain
        self._clock = clock
        self._snapshot: S | None = None
        self._live: Live | None = None
        self._last_plain: float | None = None
        self._printed: S | None = None

    def __enter__(self) -> LiveView[S]:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Begin showing (a no-op in plain mode until the first update)."""
        if self.live_mode and self._live is None:
            self._live = Live(console=self.console, auto_refresh=True,
                              refresh_per_second=self.refresh_hz, transient=False,
                              get_renderable=self._renderable)
            self._live.start()

    def due(self) -> bool:
        """Whether a fresh snapshot would be shown now: always for the live view, only when the
        next line is due in plain mode (a snapshot costs the supervisor milliseconds)."""
        return self.live_mode or self._last_plain is None or self._clock() - self._last_plain >= self.plain_interval_s

    def update(self, snapshot: S) -> None:
        """Hand over the newest snapshot (live: swapped in; plain: printed when due)."""
        self._snapshot = snapshot
        if self.live_mode:
            return
        now = self._clock()
        if self._last_plain is None or now - self._last_plain >= self.plain_interval_s:
            self._last_plain = now
            self._print_plain(snapshot)

    def stop(self) -> None:
        """Stop the live view (drawing the last snapshot), or print the last plain line."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif not self.live_mode and self._snapshot is not None:
            if self._printed is not self._snapshot:
                self._print_plain(self._snapshot)

    def _print_plain(self, snapshot: S) -> None:
        raise NotImplementedError

    def _renderable(self) -> RenderableType:
        raise NotImplementedError


class Dashboard(LiveView[Snapshot]):
    """One engine's live view: its :class:`~engine.observe.metrics.Snapshot`."""

    def _print_plain(self, snapshot: Snapshot) -> None:
        self._printed = snapshot
        self.console.print(format_plain(snapshot), markup=False, highlight=False,
                           soft_wrap=True)

    def _renderable(self) -> RenderableType:
        snap = self._snapshot
        return render(snap) if snap is not None else Text(f"{PREFIX} starting…", style="dim")


# ---- plain text ---------------------------------------------------------------------------------

def format_plain(snap: Snapshot) -> str:
    """The progress line (elapsed, accounting, overall and per-worker FPS, end-to-end latency,
    file progress with ETA), then per-stream lines when the run has several streams: one per
    stream up to :data:`PLAIN_STREAM_LINES`, else the worst few and a summary of the rest."""
    t = snap.totals
    state = "" if snap.state == "running" else f" {snap.state}"
    parts = [f"{PREFIX} {snap.elapsed_s:.1f}s{state}",
             f"frames {t.frames_in}/{t.frames_out + t.errors} ok {t.frames_out} "
             f"err {t.errors} drop {t.drops} in-flight {t.in_flight}"
             + (f" reconnects {t.reconnects}" if t.reconnects else "")]
    fps = f"fps {t.fps:.1f}"
    if snap.devices:
        fps += " (" + ", ".join(f"{d.label} {d.fps:.1f}" for d in snap.devices) + ")"
    parts.append(fps)
    e2e = snap.stage("end_to_end")
    parts.append(f"e2e p50 {_ms(e2e.p50_ms)}ms p95 {_ms(e2e.p95_ms)}ms" if e2e else "e2e -")
    done, expected, eta = file_progress(snap)
    if expected:
        parts.append(f"files {100 * done / expected:.0f}% ETA {_eta(eta)}")
    parts += [sink_text(k).plain for k in snap.sinks]
    lines = ["  ".join(parts)]
    if len(snap.streams) > 1:
        ranked = rank_streams(snap.streams)
        shown = ranked if len(ranked) <= PLAIN_STREAM_LINES else ranked[:PLAIN_STREAM_LINES // 2]
        lines += [f"{PREFIX}   {_stream_line(r)}" for r in shown]
        if len(shown) < len(ranked):
            lines.append(f"{PREFIX}   {summarise_streams(ranked[len(shown):])}")
    return "\n".join(lines)


def _stream_line(r: StreamRow) -> str:
    e2e = r.latency
    return (f"{r.name} {r.state} fps {r.fps:.1f} in {r.frames_in} out {r.frames_out} err {r.errors} "
            f"drop {r.drops} in-flight {r.in_flight}"
            + (f" e2e p50 {_ms(e2e.p50_ms)}ms p95 {_ms(e2e.p95_ms)}ms" if e2e else ""))


def analytics_text(rows: tuple[AnalyticsRow, ...], stream: str) -> str:
    """A stream's lines and zones, over their classes: ``gate in 3 out 1  lobby 2 now (5 in)``."""
    sums: dict[tuple[str, str, str], int] = {}
    for a in rows:
        if a.stream == stream:
            sums[(a.where, a.kind, a.direction)] = sums.get((a.where, a.kind, a.direction), 0) + a.value
    parts = []
    for where in dict.fromkeys(w for w, _, _ in sums):
        if (where, "zone_entries", "") in sums:
            parts.append(f"{where} {sums.get((where, 'zone_objects', ''), 0)} now "
                         f"({sums[(where, 'zone_entries', '')]} in)")
        else:
            parts.append(f"{where} in {sums.get((where, 'crossings', 'in'), 0)} "
                         f"out {sums.get((where, 'crossings', 'out'), 0)}")
    return "  ".join(parts)


def rank_streams(rows: tuple[StreamRow, ...] | list[StreamRow]) -> list[StreamRow]:
    """Worst first: failed, reconnecting, starting; then most drops + errors; then slowest."""
    return sorted(rows, key=lambda r: (_STATE_RANK.get(r.state, 2), -(r.drops + r.errors), r.fps, r.name))


def summarise_streams(rows: list[StreamRow]) -> str:
    """One line for many streams: how many in each state, FPS range, their drops and errors."""
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    fps = [r.fps for r in rows]
    return (f"{len(rows)} more: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            + f"; fps {min(fps):.1f}–{max(fps):.1f}; out {sum(r.frames_out for r in rows)} "
            f"err {sum(r.errors for r in rows)} drop {sum(r.drops for r in rows)}")


def file_progress(snap: Snapshot) -> tuple[int, int, float | None]:
    """File streams with a known length: (frames done, frames expected, seconds left or None)."""
    files = [r for r in snap.streams if r.kind == "file" and r.expected > 0]
    done = sum(min(r.done, r.expected) for r in files)
    expected = sum(r.expected for r in files)
    rate = sum(r.fps for r in files if r.state != "ended")
    left = expected - done
    return done, expected, (left / rate if rate > 0 else None) if left > 0 else 0.0


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


# ---- rich views ---------------------------------------------------------------------------------

def render(snap: Snapshot) -> RenderableType:
    """The live dashboard: header, file progress, streams, stages | devices, processes | queues,
    accounting."""
    parts: list[RenderableType] = [_header(snap)]
    progress = progress_view(snap)
    if progress is not None:
        parts.append(progress)
    if len(snap.streams) > 1 or snap.analytics:
        parts.append(streams_table(snap))
    parts += [_SideBySide(stages_table(snap), devices_table(snap)),
              _SideBySide(processes_table(snap), edges_table(snap)), accounting_text(snap.totals),
              *(sink_text(k) for k in snap.sinks)]
    return Panel(Group(*parts), title="ovstream", title_align="left", box=box.ROUNDED)


def progress_view(snap: Snapshot) -> RenderableType | None:
    """A bar of the file streams' frames done against expected, with the ETA; None without files."""
    done, expected, eta = file_progress(snap)
    if not expected:
        return None
    grid = Table.grid(padding=(0, 1))
    grid.add_row(Text("files", style="dim"), ProgressBar(total=expected, completed=done, width=40),
                 Text(f"{done}/{expected}  {100 * done / expected:.0f}%  ETA {_eta(eta)}"))
    return grid


def streams_table(snap: Snapshot, limit: int = STREAM_ROWS) -> Table:
    """Per stream: state, FPS, frames, drops, errors, in flight, end-to-end p50/p95 (and its lines and
    zones with ``[tracking]``); the worst first, and beyond ``limit`` rows one summary row for the rest."""
    table = Table(title=f"streams ({len(snap.streams)})", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("stream")
    table.add_column("state")
    for name in ("FPS", "in", "out", "drops", "errors", "in-flight", "e2e p50", "p95"):
        table.add_column(name, justify="right")
    if snap.analytics:
        table.add_column("lines and zones")
    ranked = rank_streams(snap.streams)
    shown = ranked if len(ranked) <= limit else ranked[:limit - 1]
    styles = {"failed": "red", "reconnecting": "yellow", "ended": "dim"}
    for r in shown:
        e2e = r.latency
        table.add_row(r.name, r.state, f"{r.fps:.1f}", str(r.frames_in), str(r.frames_out), str(r.drops),
                      str(r.errors), str(r.in_flight), _ms(e2e.p50_ms) if e2e else "-",
                      _ms(e2e.p95_ms) if e2e else "-",
                      *([analytics_text(snap.analytics, r.name)] if snap.analytics else []),
                      style=styles.get(r.state, "yellow" if r.drops or r.errors else None))
    if len(shown) < len(ranked):
        table.add_row(Text(summarise_streams(ranked[len(shown):]), style="dim"))
    return table


def summary_head(snap: Snapshot, title: str) -> Table:
    """The first table of an exit summary: state, duration, throughput, frames, accounting."""
    t = snap.totals
    head = Table(box=box.SIMPLE_HEAD, show_header=False, title=title, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row("state", snap.state)
    head.add_row("duration", f"{snap.elapsed_s:.2f} s")
    head.add_row("throughput", f"{t.avg_fps:.2f} FPS")
    head.add_row("frames", f"in {t.frames_in}  out {t.frames_out}  errors {t.errors}  "
                           f"drops {t.drops}  duplicates {t.duplicates}")
    head.add_row("accounting", accounting_text(t))
    return head


def render_summary(snap: Snapshot | dict) -> RenderableType:
    """Printed once at exit: totals, throughput per device, latency per stage, processes.

    Takes the final snapshot or its run report (``Snapshot.to_dict()``).
    """
    if isinstance(snap, dict):
        snap = Snapshot.from_dict(snap)
    head = summary_head(snap, "run summary")
    for k in snap.sinks:
        head.add_row("publish", sink_text(k))
    parts: list[RenderableType] = [head]
    if len(snap.streams) > 1 or snap.analytics:
        parts.append(streams_table(snap))
    return Group(*parts, stages_table(snap, all_scopes=True), devices_table(snap, summary=True),
                 processes_table(snap))


class _SideBySide:
    """Two tables in a row when the console is wide enough for both, else one above the other."""

    def __init__(self, left: Table, right: Table, gap: int = 3) -> None:
        self.left, self.right, self.gap = left, right, gap

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        need = sum(Measurement.get(console, options, t).maximum for t in (self.left, self.right))
        if need + self.gap <= options.max_width:
            grid = Table.grid(padding=(0, self.gap))
            grid.add_row(self.left, self.right)
            yield grid
        else:
            yield self.left
            yield self.right


def _header(snap: Snapshot) -> Text:
    t = snap.totals
    text = Text.assemble((f"{snap.state}", "bold cyan"), f"  {snap.elapsed_s:.1f}s  ",
                         ("throughput ", "dim"), (f"{t.fps:.1f} FPS", "bold"),
                         (f"  (avg {t.avg_fps:.1f})", "dim"))
    return text


def _visible_stages(snap: Snapshot) -> list[StageRow]:
    """Overall rows, plus per-device/per-worker rows only where they add information."""
    workers = {d.label for d in snap.devices}
    devices = {d.device for d in snap.devices}
    per_device = {dev: sum(1 for d in snap.devices if d.device == dev) for dev in devices}
    rows = []
    for r in snap.stages:
        if r.scope == ALL:
            rows.append(r)
        elif r.scope in workers and len(workers) > 1:
            rows.append(r)
        elif r.scope in devices and per_device[r.scope] > 1 and len(devices) > 1:
            rows.append(r)
    return rows


def stages_table(snap: Snapshot, all_scopes: bool = False) -> Table:
    """Latency per stage (and per device / worker): count, p50, p95, max in ms."""
    table = Table(title="stages (ms)", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("stage", "scope", "count", "p50", "p95", "max"):
        table.add_column(name, justify="left" if name in ("stage", "scope") else "right")
    rows = snap.stages if all_scopes else _visible_stages(snap)
    for r in rows:
        table.add_row(r.stage, r.scope or "all", str(r.count), _ms(r.p50_ms), _ms(r.p95_ms),
                      _ms(r.max_ms), style=None if r.scope == ALL else "dim")
    return table


def devices_table(snap: Snapshot, summary: bool = False) -> Table:
    """Throughput per inference worker, frames, in-flight requests against nireq, frames per request."""
    table = Table(title="devices", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("device")
    table.add_column("worker")
    table.add_column("avg FPS" if summary else "FPS", justify="right")
    table.add_column("frames", justify="right")
    table.add_column("in-flight/nireq", justify="right")
    table.add_column("batch", justify="right")
    table.add_column("errors", justify="right")
    for d in snap.devices:
        table.add_row(d.label, d.worker, f"{d.avg_fps if summary else d.fps:.1f}", str(d.frames),
                      f"{d.in_flight}/{d.nireq}", str(d.batch), str(d.errors),
                      style=None if d.alive else "red")
    return table


def processes_table(snap: Snapshot) -> Table:
    """pid, CPU %, RSS, restarts, errors and drops of every process."""
    table = Table(title="processes", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("process")
    table.add_column("pid", justify="right")
    for name in ("CPU%", "RSS MiB", "FPS", "restarts", "errors", "drops"):
        table.add_column(name, justify="right")
    for p in snap.processes:
        table.add_row(p.name, str(p.pid) if p.pid else "-",
                      "-" if p.cpu_percent is None else f"{p.cpu_percent:.0f}",
                      "-" if p.rss_mib is None else f"{p.rss_mib:.0f}", f"{p.fps:.1f}",
                      str(p.restarts), str(p.errors), str(p.drops),
                      style=None if p.alive else "red")
    return table


def edges_table(snap: Snapshot) -> Table:
    """Depth of every queue between stages, against its capacity where bounded."""
    table = Table(title="queues", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("queue")
    table.add_column("depth", justify="right")
    table.add_column("unit")
    for e in snap.edges:
        full = e.capacity is not None and e.capacity > 0 and e.depth >= e.capacity
        depth = f"{e.depth}/{e.capacity}" if e.capacity is not None else str(e.depth)
        table.add_row(e.name, depth, e.unit, style="yellow" if full else None)
    return table


def sink_text(k: SinkRow) -> Text:
    """``mqtt published N dropped N buffered N``; dropped in red, a lost broker in yellow."""
    return Text.assemble(
        (f"{k.name} ", "bold"), ("published ", "dim"), str(k.published),
        ("  dropped ", "dim"), (str(k.dropped), "bold red" if k.dropped else ""),
        ("  buffered ", "dim"), str(k.buffered),
        ("" if k.connected else "  (not connected)", "yellow"))


def accounting_text(t: Totals) -> Text:
    """``in N = out + errors + drops + in-flight``, green when balanced."""
    text = Text.assemble(
        ("in ", "dim"), (str(t.frames_in), "bold"), " = ",
        ("out ", "dim"), str(t.frames_out), " + ", ("errors ", "dim"), str(t.errors), " + ",
        ("drops ", "dim"), str(t.drops), " + ", ("in-flight ", "dim"), str(t.in_flight))
    if t.reconnects:
        text.append(f"  source reconnects {t.reconnects}", style="yellow")
    if t.balanced:
        text.append("  balanced", style="green")
    elif t.in_flight == 0:
        text.append("  unbalanced", style="bold red")
    return text


__all__ = ["Dashboard", "accounting_text", "analytics_text", "devices_table", "edges_table", "file_progress",
           "format_plain", "processes_table", "progress_view", "rank_streams", "render", "render_summary",
           "stages_table", "streams_table", "summarise_streams"]
