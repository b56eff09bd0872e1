"""Supervisor: checks the config, starts the stage processes, watches them, restarts, cleans up.

It owns everything that must outlive a crashed stage: the shared-memory pools, the private run
directory with the socket files, and one ledger per stream of the frame ids written to the
sinks. A dead inference worker is restarted alone (the preprocessor re-sends the batches it
held); a dead decoder is restarted alone once the preprocessor has fenced off the frames it had
sent, and its streams resume from their ledgers (when annotating, raw frames are still held
downstream, so the pipeline restarts instead); any other dead stage restarts the pipeline's
stages from the ledgers. Every file frame of every stream is written exactly once. The run
ends when every stream has ended (a live stream ends only when it is lost for good), after
``duration_s``, or on Ctrl-C / SIGTERM, which stop everything within about a second.

The :class:`Supervisor` composes the parts, each one job: :mod:`~engine.control.preflight`
(the checks), :mod:`~engine.control.pools` (pool sizes and the run's shared memory),
:mod:`~engine.control.lifecycle` (the stage processes), :mod:`~engine.control.accounting` (the
ledgers: what was written, when a stream is done) and :mod:`~engine.control.stream_changes`
(streams a library pipeline adds and removes). Here: the run loop, the messages of the stages
and of the library link, and what the run shows (dashboard, /metrics, ``status.json``).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from engine.config import RunConfig
from engine.control.accounting import Accounting
from engine.control.launch import Launcher, StageProcess
from engine.control.lifecycle import (
    Child,
    ControlChannel,
    RunState,
    Stages,
    Stopped,
    decoder_index,
    stage_children,
)
from engine.control.pools import RunSpace, check_memory, pool_sizes, slots_per_stream
from engine.control.preflight import preflight
from engine.control.stream_changes import REPLIES, StreamChanges
from engine.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, OvstreamError
from engine.io.streams import Layout, plan
from engine.observe.dashboard import Dashboard
from engine.observe.logs import stage_level
from engine.observe.metrics import MetricsAggregator, Snapshot
from engine.protocol.apilink import ServiceLink
from engine.protocol.context import ModelInput, StageContext
from engine.protocol.messages import (
    AckMsg,
    AddSourceMsg,
    DecoderFencedMsg,
    DrainedMsg,
    FatalMsg,
    Message,
    ReadyMsg,
    RemoveSourceMsg,
    SeenMsg,
    SnapshotMsg,
    StartedMsg,
    StartMsg,
    StatsMsg,
    StopRunMsg,
)

PUBLISH_S = 0.5             # how often /metrics gets a fresh snapshot

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a run ended."""

    exit_code: int
    message: str = ""
    report: dict = field(default_factory=dict)


class Supervisor:
    """Runs one pipeline to completion (or interruption)."""

    def __init__(self, cfg: RunConfig, dashboard: bool = True, duration_s: float = 0.0,
                 link: ServiceLink | None = None, max_streams: int = 0, launcher: Launcher | None = None,
                 persistent: bool = False) -> None:
        self.cfg = cfg
        self.link = link            # a library pipeline (engine/api/pipeline.py) that owns this run
        self.persistent = persistent and link is not None   # a service's: runs on after every stream ended
        self.launcher = launcher or Launcher()     # the caller's may hold inference workers started ahead
        sources = len(cfg.streams)
        info, batch = preflight(cfg, streams_may_join=max_streams > sources)   # batch: chosen when 0
        self.model_input = ModelInput(info.height, info.width, batch)
        self.launcher.configure(cfg, batch)   # workers started ahead compile while the pools are made
        self.live_view = dashboard and cfg.dashboard.enabled     # else plain progress lines
        self.duration_s = duration_s
        self.metrics = MetricsAggregator()
        self.metrics.watch("supervisor", os.getpid(), "supervisor")
        spare = max(0, max_streams - sources)     # ranges for streams added later
        self.layout: Layout = plan(cfg, slots_per_stream(cfg, batch), spare=spare)
        self.pool_sizes = pool_sizes(cfg, self.layout.raw_slots, batch, info.frame_bytes)
        check_memory(self.pool_sizes)          # before anything is allocated
        self.output_dir = Path(cfg.output.dir)
        self.log_dir = self.output_dir / "logs"
        self.state = RunState()
        self.accounting = Accounting(self.layout, cfg.streams, self.metrics)
        self.channel = ControlChannel(self._on_message)     # bound once the run's directory exists
        self.changes = StreamChanges(cfg, self.layout, link, self.accounting, self.channel.send, self.state,
                                    persistent=self.persistent)
        self.link_commands: dict[type[Message], Callable[[Any], None]] = {   # the library link's, by type
            StopRunMsg: self._on_stop_run, SeenMsg: self._on_seen, DrainedMsg: self._on_drained,
            AddSourceMsg: self.changes.request, RemoveSourceMsg: self.changes.request}
        self.stages = Stages(stage_children(cfg, self.layout), self._launch, self.channel, self.state,
                             self.metrics, cfg.pipeline.max_restarts, self.log_dir, annotating=cfg.output.annotated)
        self.space: RunSpace | None = None      # the run's directory and pools, from _allocate
        self.exporter = None
        if cfg.metrics.port:
            from engine.observe.exporter import MetricsServer  # prometheus_client only where a run serves it
            self.exporter = MetricsServer(cfg.metrics.host, cfg.metrics.port)

    @property
    def interrupted(self) -> int:
        """The signal that stopped the run (0: none)."""
        return self.state.interrupted

    # ---- set-up -----------------------------------------------------------------------------
    def _allocate(self) -> RunSpace:
        self.space = space = RunSpace()
        space.allocate(self.pool_sizes)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.channel.bind(space.run_dir.endpoint("control"))
        return space

    def _launch(self, child: Child) -> StageProcess:
        """Start ``child``'s process with its context (also written to the run's directory)."""
        assert self.space is not None, "started before the pools were made"
        return self.launcher.start(self._context(child, self.space), self.space.run_dir.path / f"{child.name}.json")

    def _context(self, child: Child, space: RunSpace) -> StageContext:
        if child.role == "decoder":
            mine = [s for s in self.layout.open_streams(decoder_index(child.name)) if s.sid not in self.changes.adding]
            streams = [s.sid for s in mine]
            resume = {str(s.sid): self.accounting.resume[str(s.sid)] for s in mine
                      if str(s.sid) in self.accounting.resume}
        else:
            streams, resume = [s.sid for s in self.layout.streams], {}
        endpoints = space.run_dir.endpoints(self.layout.decoders)
        post = child.role == "postprocessor"
        if self.link is not None and post:
            endpoints["api"] = self.link.results_endpoint
            if self.link.view_endpoint:
                endpoints["view"] = self.link.view_endpoint
        return StageContext(
            role=child.role, name=child.name, generation=self.state.generation,
            endpoints=endpoints, pools=space.pools, config=self.cfg, input=self.model_input,
            device=child.device, completed=self.accounting.completed(streams),
            supervisor_pid=os.getpid(), layout=self.layout.to_dict(), epoch=child.restarts, resume=resume,
            replay_from=self.accounting.replay_from if post else {},
            api_from=self.accounting.api_seen if post else {}, log_level=stage_level(),
            log_file=str(self.log_dir / f"{child.name}.log"), run_id=space.run_id)

    # ---- messages ---------------------------------------------------------------------------
    def _on_message(self, sender: str, msg: Message) -> None:
        child = self.stages.seen(sender)
        if isinstance(msg, StatsMsg):
            self.metrics.ingest(msg)
            if msg.role == "postprocessor" and msg.generation == self.state.generation:
                self.accounting.note_replay_marks(msg.gauges)
        elif isinstance(msg, ReadyMsg) and child is not None:
            child.ready = True
            self.changes.on_ready(child.name)
            self.metrics.note_ready(msg.process, msg.pid, msg.info)
            if self.state.started:
                self.channel.send(child.name, StartMsg(self.state.generation))
        elif isinstance(msg, AckMsg):                   # written is written, whatever the generation
            self.accounting.on_ack(msg, self.state.generation)
        elif isinstance(msg, DecoderFencedMsg) and child is not None:
            self._on_fenced(msg)
        elif isinstance(msg, REPLIES) and child is not None:
            self.changes.on_reply(child.name, msg)
        elif isinstance(msg, FatalMsg) and child is not None:
            first = msg.error.strip().splitlines()[0] if msg.error.strip() else "unknown error"
            if msg.usage:                  # restarting cannot fix a user mistake or a full disk
                self.state.failure = self.state.failure or f"{child.name}: {first}"
            else:
                logger.warning("%s: %s", child.name, first)

    def _on_fenced(self, msg: DecoderFencedMsg) -> None:
        """The preprocessor dropped a dead decoder's waiting frames and will ignore any later
        ones: its slots are free for a successor, which resumes its streams from the ledgers
        (a live stream goes on numbering after the last frame that passed the fence)."""
        child = self.stages.children.get(self.layout.decoder_name(msg.decoder))
        if child is None:
            return
        self.accounting.resume.update(msg.next_ids)
        if child.fenced and child.proc is None:
            child.fenced = False
            self.changes.forget_removed(self.layout.owned_by(msg.decoder))
            self.stages.spawn(child)

    def _restart_pipeline(self) -> None:
        """A stage other than an inference worker or a lone decoder died: restart all stages
        from the ledgers."""
        self.stages.stop_all()
        if self.cfg.output.jsonl:              # written but not acknowledged before the crash: count them
            self.accounting.recover(self.output_dir / "results.jsonl")
        self.state.generation += 1
        self.accounting.resume.clear()
        self.changes.on_restart()
        self.stages.respawn_all()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.state.interrupted = signum

    # ---- a library pipeline -----------------------------------------------------------------
    def _serve_link(self) -> None:
        """The commands of the library pipeline that owns this run (engine/api/pipeline.py)."""
        if self.link is None:
            return
        for msg in self.link.receive():
            handler = self.link_commands.get(type(msg))
            if handler is not None:
                handler(msg)
        if self.link.orphaned:             # the Python process that owned the pipeline is gone
            self.state.interrupted = self.state.interrupted or signal.SIGTERM

    def _on_stop_run(self, _msg: StopRunMsg) -> None:
        self.state.stop_requested = True

    def _on_seen(self, msg: SeenMsg) -> None:
        self.accounting.note_seen(msg.marks)

    def _on_drained(self, msg: DrainedMsg) -> None:
        if self.link is not None:
            self.link.drained = max(self.link.drained, msg.streams)

    def _done(self) -> bool:
        """Every stream has ended and, for a library pipeline, its iterator holds every result
        (the postprocessor keeps handing them over until then). A persistent (service) pipeline
        is never done: it runs until it is stopped."""
        if self.persistent:
            return False
        return self.accounting.finished and (self.link is None or self.link.drained >= len(self.layout.streams))

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Run the pipeline; always stops every process and removes pools and sockets.

        Ctrl-C / SIGTERM only set a flag from here on (also while the caller writes the report);
        stages are spawned after the signals are unblocked, so they inherit a clean mask.
        """
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        if self.state.interrupted:                  # pressed during the checks: nothing was started
            return Outcome(EXIT_INTERRUPTED, f"interrupted by signal {self.state.interrupted}")
        dashboard = self._dashboard()
        try:
            self._allocate()
            self.stages.start_all(self._serve_link)
            if self.link is not None:
                self.link.send(StartedMsg([s.name for s in self.layout.streams]))
            dashboard.start()
            self._loop(dashboard)
            self._stop(dashboard)
        except Stopped as exc:
            self.stages.stop_all()
            return Outcome(EXIT_OK, str(exc))
        except OvstreamError as exc:
            self.stages.stop_all()
            code = EXIT_INTERRUPTED if self.state.interrupted else exc.exit_code
            if code == EXIT_INTERRUPTED:
                return Outcome(code, f"interrupted by signal {self.state.interrupted}")
            return Outcome(code, str(exc))
        finally:
            if self.link is not None:
                self.changes.refuse_waiting()
            dashboard.stop()
            self._cleanup()
        return self._outcome()

    def _loop(self, dashboard: Dashboard) -> None:
        """Until every stream has ended, ``duration_s`` has passed, a signal, a failure or a stop:
        take messages, watch the stages, serve the library link, draw and publish."""
        state = self.state
        next_draw = next_publish = 0.0
        deadline = time.monotonic() + self.duration_s if self.duration_s > 0 else None
        publishing = self.exporter is not None or self.cfg.output.status or self.link is not None
        while not self._done() and not state.interrupted and not state.failure and not state.stop_requested:
            self.channel.receive(50)
            self.stages.watch(self._restart_pipeline)
            self._serve_link()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            draw = now >= next_draw and dashboard.due()
            publish = publishing and now >= next_publish
            if draw or publish:
                snapshot = self.metrics.snapshot()      # one snapshot for every view
                if draw:
                    dashboard.update(snapshot)
                    next_draw = now + 1.0 / self.cfg.dashboard.refresh_hz
                if publish:
                    self._publish(snapshot)
                    next_publish = now + PUBLISH_S

    def _stop(self, dashboard: Dashboard) -> None:
        """The run's end: its state, then every stage stopped (the sinks given time to drain on a
        normal end), and the final count drawn."""
        state = self.state
        self.metrics.set_state("interrupted" if state.interrupted else "failed" if state.failure
                               else "stopped" if state.stop_requested and not self.accounting.finished
                               else "finished")
        normal_end = not (state.interrupted or state.failure)
        mqtt = self.cfg.output.mqtt
        self.stages.stop_all(drain_s=mqtt.flush_timeout_s if normal_end and mqtt.host else 0.0)
        dashboard.update(self.metrics.snapshot())       # the last line shows the final count

    def _outcome(self) -> Outcome:
        """The report of a run that got going, and its exit code."""
        snapshot = self.metrics.snapshot()
        self._publish(snapshot)                           # the last scrape reads the report's figures
        report = snapshot.to_dict()
        report["restarts"] = self.stages.restarts()
        if self.state.interrupted:
            return Outcome(EXIT_INTERRUPTED, f"interrupted by signal {self.state.interrupted}", report)
        if self.state.failure:
            report["failure"] = self.state.failure
            return Outcome(EXIT_FAILED, self.state.failure, report)
        errors = report.get("accounting", {}).get("errors", 0)
        failed = [row.name for row in snapshot.streams if row.state == "failed"]
        problems = [f"{errors} frames failed"] if errors else []
        if failed:                  # e.g. a reader that broke off: its stream ended early, maybe without a record
            problems.append(f"stream(s) {', '.join(failed)} failed (see the decoder logs)")
        return Outcome(EXIT_FAILED if problems else EXIT_OK, "; ".join(problems), report)

    # ---- what the run shows -----------------------------------------------------------------
    def _publish(self, snapshot: Snapshot) -> None:
        """Hand the snapshot to /metrics, to the library pipeline that owns the run and, with
        ``[output] status``, to ``status.json`` (written
        whole, then renamed over the last one, so a reader never sees half of it)."""
        if self.exporter is not None:
            self.exporter.publish(snapshot)
        if self.link is not None:
            self.link.send(SnapshotMsg(snapshot.to_dict()))
        if self.cfg.output.status:
            path = self.output_dir / "status.json"
            try:
                tmp = path.with_name(".status.json.tmp")
                tmp.write_text(json.dumps(snapshot.to_dict()), encoding="utf-8")
                os.replace(tmp, path)
            except OSError:
                pass        # a monitor's view, never worth stopping the run for

    def _dashboard(self) -> Dashboard:
        """The live view on a terminal (stderr); otherwise, or with ``[dashboard] enabled = false``
        (``--no-dashboard``), a plain progress line every 2 s on stdout."""
        live = Console(stderr=True)
        if self.live_view and live.is_terminal:
            return Dashboard(self.cfg.dashboard.refresh_hz, console=live)
        return Dashboard(self.cfg.dashboard.refresh_hz, console=Console(), plain=True)

    def _cleanup(self) -> None:
        self.stages.kill_all()
        self.launcher.close()
        self.channel.close()
        if self.space is not None:
            self.space.close()
