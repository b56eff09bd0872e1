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
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq
from rich.console import Console

from engine.config import RunConfig
from engine.control.launch import Launcher, StageProcess, inference_name
from engine.control.stream_changes import REPLIES, StreamChanges
from engine.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ConfigError, OvstreamError
from engine.io.sinks import JsonlSink
from engine.config.streams import is_live_uri
from engine.io.sources import open_source
from engine.io.streams import Layout, is_live, plan
from engine.model.adapters import create_adapter
from engine.model.cache import ModelCache, cache_root, writable
from engine.model.prepare import (
    AUTO_BATCH,
    InputInfo,
    check_devices,
    check_preprocess,
    check_properties,
    model_facts,
    preflight_compile,
    prepare_model,
    raw_properties,
    read_model,
)
from engine.model.runtime import ov
from engine.observe.dashboard import Dashboard
from engine.observe.logs import stage_level
from engine.observe.metrics import MetricsAggregator, split_stream_key
from engine.protocol.apilink import ServiceLink
from engine.protocol.channels import RunDir, make_socket, pending
from engine.protocol.context import StageContext
from engine.protocol.ledger import FrameLedger
from engine.protocol.messages import (
    AckMsg,
    ApiMsg,
    DecoderDownMsg,
    DecoderFencedMsg,
    FatalMsg,
    Message,
    MessageError,
    ReadyMsg,
    StartMsg,
    StatsMsg,
    StopMsg,
    WorkerDownMsg,
    decode,
)
from engine.protocol.shm import PoolSpec, SlotPool

READY_TIMEOUT_S = 300.0       # compiling for a GPU can take minutes the first time
STOP_GRACE_S = 1.0
REPORT_WAIT_S = 2.0         # how long the FatalMsg of a stage that exited with code 2 may take to arrive
HANG_TIMEOUT_S = 30.0       # a live source may block this long while it reconnects
PUBLISH_S = 0.5             # how often /metrics gets a fresh snapshot

logger = logging.getLogger(__name__)


@dataclass
class Child:
    """One stage process and what the supervisor knows of it."""

    name: str
    role: str
    device: str = ""
    proc: StageProcess | None = None
    ready: bool = False
    restarts: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    fenced: bool = False          # a dead decoder waiting for the preprocessor's fence


@dataclass
class Outcome:
    """How a run ended."""

    exit_code: int
    message: str = ""
    report: dict = field(default_factory=dict)


def preflight(cfg: RunConfig, streams_may_join: bool = False) -> tuple[InputInfo, int]:
    """Everything that can be wrong before a process starts: devices and their properties, model,
    preprocessing, adapter, sources. Returns the model's input and the frames per request
    (``batch = 0``: one when ``streams_may_join``, as a library pipeline's camera may)."""
    core = ov.Core()
    check_devices(core, cfg.inference.devices)
    for device in cfg.inference.devices:
        check_properties(core, cfg.inference, device)
    root = writable(cache_root(cfg.inference.cache_dir))
    cache = ModelCache(root) if root is not None else None
    auto = cfg.inference.batch == 0
    batch = cfg.inference.batch or (AUTO_BATCH if files_only(cfg) and not streams_may_join else 1)
    hit = cache.lookup(cfg.model, batch) if cache is not None else None
    if hit is None and auto and batch > 1 and cache is not None:
        known = cache.lookup(cfg.model, 1)        # an earlier run found that the graph fixes its batch
        if known is not None and not known[1].get("batchable", True):
            hit, batch = known, 1
    model = None
    if hit is not None:       # checked and prepared by an earlier run: its facts, not a second read
        facts = hit[1]
    else:
        model = read_model(core, cfg.model.path)
        facts = model_facts(model, cfg.model)
        if auto and not facts["batchable"]:
            batch = 1
    info = InputInfo(**facts["input"])
    check_preprocess(info, cfg.model)
    create_adapter(cfg.model).check_outputs(facts["outputs"])
    if model is not None:
        prepared, _ = prepare_model(model, cfg.model, batch)   # e.g. a batch the graph cannot take: one line now
        if cache is not None:                                  # the inference workers compile it by path
            cache.store(cfg.model, batch, prepared, facts)
    for device in cfg.inference.devices:       # raw OpenVINO properties: tried in a real compile
        if raw_properties(cfg.inference, device):
            preflight_compile(core, cfg, device, batch)
    for src in cfg.sources or [cfg.source]:
        if not is_live_uri(src.uri):
            open_source(src).close()     # a missing or empty folder, a bad file type: one line now
    return info, batch


def files_only(cfg: RunConfig) -> bool:
    """Every source is a file read as fast as it goes (not live, not paced): nobody waits for a
    batch to fill."""
    return all(not is_live(src) and not src.realtime and not src.max_fps for src in cfg.sources or [cfg.source])


@dataclass(frozen=True)
class PoolSizes:
    """The two slot pools of a run: bytes per slot and slot counts."""

    raw_bytes: int
    raw_slots: int
    input_bytes: int
    input_slots: int

    @property
    def total(self) -> int:
        return self.raw_bytes * self.raw_slots + self.input_bytes * self.input_slots


def check_memory(sizes: PoolSizes, share: float = 0.5) -> None:
    """Refuse pools larger than ``share`` of the memory available now, in one line."""
    available = psutil.virtual_memory().available
    if sizes.total > share * available:
        gib = 1 << 30
        raise ConfigError(
            f"the frame pools would need {sizes.total / gib:.1f} GiB (raw {sizes.raw_slots} × "
            f"{sizes.raw_bytes / 2**20:.1f} MiB, input {sizes.input_slots} × {sizes.input_bytes / 2**20:.1f} MiB), "
            f"more than half of the {available / gib:.1f} GiB available: lower [inference] batch or nireq, "
            f"[pipeline] input_slots, raw_slots or max_frame_width/height")


class StartFailure(OvstreamError):
    """A stage kept dying before it was ready: not a user mistake (exit code 1)."""

    exit_code = EXIT_FAILED


class Stopped(OvstreamError):
    """The library pipeline that owns the run stopped it before it had started."""

    exit_code = EXIT_OK


class Supervisor(StreamChanges):
    """Runs one pipeline to completion (or interruption)."""

    def __init__(self, cfg: RunConfig, dashboard: bool = True, duration_s: float = 0.0,
                 link: ServiceLink | None = None, max_streams: int = 0, launcher: Launcher | None = None) -> None:
        self.cfg = cfg
        self.link = link            # a library pipeline (engine/api/pipeline.py) that owns this run
        self.launcher = launcher or Launcher()     # the caller's may hold inference workers started ahead
        sources = len(cfg.sources or [cfg.source])
        self.info, self.batch = preflight(cfg, streams_may_join=max_streams > sources)   # batch: chosen when 0
        self.launcher.configure(cfg, self.batch)   # workers started ahead compile while the pools are made
        self.live_view = dashboard and cfg.dashboard.enabled     # else plain progress lines
        self.duration_s = duration_s
        self.metrics = MetricsAggregator()
        self.metrics.watch("supervisor", os.getpid(), "supervisor")
        self.children: dict[str, Child] = {}
        spare = max(0, max_streams - sources)     # ranges for streams added later
        self.layout: Layout = plan(cfg, self._slots_per_stream(), spare=spare)
        check_memory(self._pool_sizes())          # before anything is allocated
        for spec, src in zip(self.layout.streams, cfg.sources or [cfg.source]):
            self.metrics.add_stream(spec.name, spec.uri, spec.kind, first=src.start)
        # a stream that starts later ([source] start) has its earlier frames written elsewhere
        self.ledgers = [FrameLedger.from_ranges([[0, src.start]] if src.start else [])
                        for src in cfg.sources or [cfg.source]]
        self.acked = [[0, 0] for _ in self.layout.streams]     # per stream: results, error records
        self.ended: set[int] = set()
        self.resume: dict[str, int] = {}        # live stream → next frame id for a restarted decoder
        self.replay_from: dict[str, int] = {}   # MQTT: stream → lowest frame id the broker has not confirmed
        self.api_seen: dict[str, int] = {}      # library pipeline: stream → first frame id its iterator lacks
        self.adding: dict[int, set[str]] = {}  # added stream → stages yet to confirm they know it
        self.waiting_adds: list[ApiMsg] = []   # add_source requests waiting for a range to come free
        self.generation = 0
        self.started = False        # every stage said READY and was told to start
        self.finished = False
        self.interrupted = 0
        self.stop_requested = False     # the library pipeline said stop
        self.failure = ""
        self.output_dir = Path(cfg.output.dir)
        self.exporter = None
        if cfg.metrics.port:
            from engine.observe.exporter import MetricsServer  # prometheus_client only where a run serves it
            self.exporter = MetricsServer(cfg.metrics.host, cfg.metrics.port)

    # ---- set-up -----------------------------------------------------------------------------
    def _input_slots(self) -> int:
        cfg = self.cfg
        # nireq = 0: the worker picks (a CPU: 2 per stream), so leave room for 2 per core
        return cfg.pipeline.input_slots or len(cfg.inference.devices) * (cfg.inference.nireq or
                                                                           max(4, 2 * (os.cpu_count() or 1))) + 2

    def _pool_sizes(self) -> PoolSizes:
        cfg = self.cfg
        return PoolSizes(cfg.pipeline.max_frame_width * cfg.pipeline.max_frame_height * 3, self.layout.raw_slots,
                         self.batch * self.info.frame_bytes, self._input_slots())

    def _slots_per_stream(self) -> int:
        """Raw slots each stream owns: ``max(3, raw_slots // streams)``; when annotating, raw
        frames are held until drawn, so enough to fill every input slot as well."""
        cfg = self.cfg
        n = len(cfg.sources or [cfg.source])
        per = max(3, cfg.pipeline.raw_slots // n)
        if cfg.output.images or cfg.output.video:
            per = max(per, -(-(self._input_slots() * self.batch + 4) // n))
        return per

    def _allocate(self) -> None:
        cfg = self.cfg
        RunDir.sweep_stale()
        self.run_dir = RunDir()
        sizes = self._pool_sizes()
        self.pools: dict[str, PoolSpec] = {}
        self.pools["raw"] = SlotPool.create(self.run_dir.run_id, "raw", sizes.raw_bytes, sizes.raw_slots)
        self.pools["input"] = SlotPool.create(self.run_dir.run_id, "input", sizes.input_bytes, sizes.input_slots)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.output_dir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.zmq = zmq.Context()
        self.control = make_socket(self.zmq, zmq.ROUTER, bind=self.run_dir.endpoint("control"), hwm=100_000)
        self.children = {"postprocessor": Child("postprocessor", "postprocessor"),
                         "preprocessor": Child("preprocessor", "preprocessor")}
        for i, device in enumerate(cfg.inference.devices):
            self.children[inference_name(i)] = Child(inference_name(i), "inference", device)
        for d in range(self.layout.decoders):
            name = self.layout.decoder_name(d)
            self.children[name] = Child(name, "decoder")

    def _context(self, child: Child) -> StageContext:
        if child.role == "decoder":
            mine = [s for s in self.layout.open_streams(int(child.name.rsplit("-", 1)[-1])) if s.sid not in self.adding]
            streams = [s.sid for s in mine]
            resume = {str(s.sid): self.resume[str(s.sid)] for s in mine if str(s.sid) in self.resume}
        else:
            streams, resume = [s.sid for s in self.layout.streams], {}
        endpoints = self.run_dir.endpoints(self.layout.decoders)
        if self.link is not None and child.role == "postprocessor":
            endpoints["api"] = self.link.results_endpoint
        return StageContext(
            role=child.role, name=child.name, generation=self.generation,
            endpoints=endpoints, pools=self.pools, config=self.cfg,
            input={"height": self.info.height, "width": self.info.width, "batch": self.batch},
            device=child.device, completed={str(sid): self.ledgers[sid].ranges() for sid in streams},
            supervisor_pid=os.getpid(), layout=self.layout.to_dict(), epoch=child.restarts, resume=resume,
            replay_from=self.replay_from if child.role == "postprocessor" else {},
            api_from=self.api_seen if child.role == "postprocessor" else {}, log_level=stage_level(),
            log_file=str(self.log_dir / f"{child.name}.log"), run_id=self.run_dir.run_id)

    def _spawn(self, child: Child) -> None:
        child.proc = self.launcher.start(self._context(child), self.run_dir.path / f"{child.name}.json")
        logger.debug("%s started: pid %d, generation %d", child.name, child.proc.pid, self.generation)
        child.ready = False
        child.last_seen = time.monotonic()

    # ---- messages ---------------------------------------------------------------------------
    def _send(self, name: str, msg: Message) -> None:
        """A command to stage ``name``."""
        try:
            self.control.send_multipart([name.encode(), msg.encode()], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # a peer that is gone gets nothing; its death is handled on its own

    def _receive(self, timeout_ms: int) -> None:
        if not self.control.poll(timeout_ms):
            return
        for frames in pending(self.control, multipart=True):
            if len(frames) != 2:
                continue
            try:
                msg = decode(frames[1])
            except MessageError:
                continue
            child = self.children.get(frames[0].decode(errors="replace"))
            if child is not None:
                child.last_seen = time.monotonic()
            self._on_message(child, msg)

    def _on_message(self, child: Child | None, msg: Message) -> None:
        if isinstance(msg, StatsMsg):
            self.metrics.ingest(msg)
            if msg.role == "postprocessor" and msg.generation == self.generation:
                self._note_replay_marks(msg.gauges)
        elif isinstance(msg, ReadyMsg) and child is not None:
            child.ready = True
            for waiting in list(self.adding.values()):    # a new instance knows every stream there is
                waiting.discard(child.name)
            self._open_added()
            self.metrics.note_ready(msg.process, msg.pid, msg.info)
            if self.started:
                self._send(child.name, StartMsg(self.generation))
        elif isinstance(msg, AckMsg):                   # written is written, whatever the generation
            if not 0 <= msg.stream < len(self.ledgers):
                return
            counts = self.acked[msg.stream]
            counts[0] += self.ledgers[msg.stream].add(msg.frame_ids)
            counts[1] += self.ledgers[msg.stream].add(msg.error_ids)
            if self.layout.streams[msg.stream].live:    # acks come in order; a gap below is given up
                self.ledgers[msg.stream].settle()
            self.metrics.set_stream_acks(msg.stream, *counts)
            if msg.finished and msg.generation == self.generation:
                self._end_stream(msg.stream)
        elif isinstance(msg, DecoderFencedMsg) and child is not None:
            self._on_fenced(msg)
        elif isinstance(msg, REPLIES) and child is not None:
            self._on_stream_reply(child.name, msg)
        elif isinstance(msg, FatalMsg) and child is not None:
            first = msg.error.strip().splitlines()[0] if msg.error.strip() else "unknown error"
            if msg.usage:                  # restarting cannot fix a user mistake or a full disk
                self.failure = self.failure or f"{child.name}: {first}"
            else:
                logger.warning("%s: %s", child.name, first)

    def _note_replay_marks(self, gauges: dict) -> None:
        """The MQTT sink's per-stream marks (``mqtt_replay_from@<stream>``): where a restarted
        postprocessor publishes results.jsonl again from."""
        for key, value in gauges.items():
            parsed = split_stream_key(key)
            if parsed and parsed[0] == "mqtt_replay_from" and isinstance(value, int) \
                    and 0 <= parsed[1] < len(self.layout.streams):
                self.replay_from[self.layout.streams[parsed[1]].name] = value

    # ---- lifecycle --------------------------------------------------------------------------
    def _start_all(self) -> None:
        for child in sorted(self.children.values(), key=lambda c: c.role != "inference"):   # the slowest first
            self._spawn(child)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(c.ready for c in self.children.values()):
            self._receive(100)
            if self.failure:
                raise OvstreamError(self.failure)
            for child in self.children.values():
                if child.proc is not None and child.proc.poll() is not None and not child.ready:
                    self._on_start_death(child)
            self._serve_link()
            if self.interrupted:
                raise OvstreamError("interrupted during start-up")
            if self.stop_requested:
                raise Stopped("stopped during start-up")
            if time.monotonic() > deadline:
                raise StartFailure(f"stages not ready after {READY_TIMEOUT_S:.0f}s: "
                                   f"{', '.join(c.name for c in self.children.values() if not c.ready)}")
        self.started = True
        self.metrics.start()
        for child in self.children.values():
            self._send(child.name, StartMsg(self.generation))
        if self.link is not None:
            self.link.send("started", {"streams": [s.name for s in self.layout.streams]})

    def _on_start_death(self, child: Child) -> None:
        """A stage died before it was ready: a user mistake it reported stops the run (exit 2);
        anything else is retried like a crash, up to ``max_restarts`` (then exit 1)."""
        self._await_reported(child)
        if self.failure:
            raise OvstreamError(self.failure)
        code = child.proc.returncode if child.proc else None
        child.restarts += 1
        self.metrics.note_restart(child.name)
        log = self.log_dir / f"{child.name}.log"
        if child.restarts > self.cfg.pipeline.max_restarts:
            raise StartFailure(f"{child.name} could not start: exited {child.restarts} times during start-up "
                               f"(last exit code {code}); see {log}")
        logger.warning("%s exited during start-up with code %s; restarting", child.name, code)
        self._spawn(child)

    def _stop_all(self, drain_s: float = 0.0) -> None:
        """Stop every stage: ``stop``, then SIGKILL whatever still runs after the grace period
        (plus ``drain_s`` for the sinks to drain, e.g. MQTT records the broker has not confirmed)."""
        for child in self.children.values():
            self._send(child.name, StopMsg(self.generation))
        deadline = time.monotonic() + STOP_GRACE_S + drain_s
        while time.monotonic() < deadline and any(c.proc and c.proc.poll() is None for c in self.children.values()):
            self._receive(20)
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        while self.control.poll(20):         # what the stages sent on their way out: last acks and stats
            self._receive(0)

    def _await_reported(self, child: Child) -> None:
        """Take the FatalMsg a dead stage sent just before it exited. Exit code 2 says it reported a
        user mistake or a full disk, which a restart cannot fix: its message may still be on its way
        (a poll that finds nothing yet is no answer), so it is waited for, briefly, and the run fails
        with it (or with the exit code, if it never comes) instead of restarting the stage."""
        self._receive(0)
        code = child.proc.returncode if child.proc else None
        deadline = time.monotonic() + REPORT_WAIT_S
        while code == EXIT_USAGE and not self.failure and time.monotonic() < deadline:
            self._receive(20)
        if code == EXIT_USAGE and not self.failure:
            self.failure = f"{child.name} stopped on an error (exit code {code}); see {self.log_dir / child.name}.log"

    def _on_death(self, child: Child) -> None:
        self._await_reported(child)
        if self.failure:
            return                                      # a restart cannot fix what it reported
        child.restarts += 1
        self.metrics.note_restart(child.name)
        code = child.proc.returncode if child.proc else None
        if child.restarts > self.cfg.pipeline.max_restarts:
            self.failure = f"{child.name} died {child.restarts} times (last exit code {code}); giving up"
            return
        logger.warning("%s exited with code %s; restarting", child.name, code)
        if child.role == "inference":
            self._send("preprocessor", WorkerDownMsg(f"{child.name}@{child.proc.pid}", self.generation))
            self._spawn(child)
            return
        annotating = self.cfg.output.images or self.cfg.output.video
        if child.role == "decoder" and not annotating and self.started:
            child.proc, child.fenced = None, True        # respawned once the preprocessor has fenced it
            down = DecoderDownMsg(int(child.name.rsplit("-", 1)[-1]), child.restarts, self.generation)
            self._send("preprocessor", down)
            return
        self._restart_pipeline()

    def _on_fenced(self, msg: DecoderFencedMsg) -> None:
        """The preprocessor dropped a dead decoder's waiting frames and will ignore any later
        ones: its slots are free for a successor, which resumes its streams from the ledgers
        (a live stream goes on numbering after the last frame that passed the fence)."""
        child = self.children.get(self.layout.decoder_name(msg.decoder))
        if child is None:
            return
        self.resume.update(msg.next_ids)
        if child.fenced and child.proc is None:
            child.fenced = False
            self._forget_removed(self.layout.owned_by(msg.decoder))
            self._spawn(child)

    def _restart_pipeline(self) -> None:
        """A stage other than an inference worker or a lone decoder died: restart all stages
        from the ledgers."""
        self._stop_all()
        if self.cfg.output.jsonl:              # written but not acknowledged before the crash: count them
            names = {st.name: st.sid for st in self.layout.streams}
            for name, (ok, errors) in JsonlSink.recover(self.output_dir / "results.jsonl").items():
                if name in names:
                    sid = names[name]
                    counts = self.acked[sid]
                    counts[0] += self.ledgers[sid].add(ok)
                    counts[1] += self.ledgers[sid].add(errors)
                    self.metrics.set_stream_acks(sid, *counts)
        self.generation += 1
        self.resume.clear()
        self._forget_removed(self.layout.streams)
        self.adding.clear()                    # every new instance knows every stream
        for child in self.children.values():
            child.fenced = False
            self._spawn(child)

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None:
                continue
            if child.proc.poll() is not None:
                self._on_death(child)
            elif child.ready and now - child.last_seen > HANG_TIMEOUT_S:
                logger.warning("%s silent for %.0fs; killing it", child.name, HANG_TIMEOUT_S)
                child.proc.kill()
                child.proc.wait()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.interrupted = signum

    # ---- a library pipeline -----------------------------------------------------------------
    def _serve_link(self) -> None:
        """The commands of the library pipeline that owns this run (engine/api/pipeline.py)."""
        if self.link is None:
            return
        for msg in self.link.receive():
            if msg.kind == "stop":
                self.stop_requested = True
            elif msg.kind == "seen" and isinstance(msg.arg.get("marks"), dict):
                for name, mark in msg.arg["marks"].items():
                    if isinstance(name, str) and isinstance(mark, int):
                        self.api_seen[name] = max(self.api_seen.get(name, 0), mark)
            elif msg.kind == "drained":
                self.link.drained = max(self.link.drained, int(msg.arg.get("streams", 0)))
            elif msg.kind == "add_source" and self._draining() and not self.layout.spare:
                self.waiting_adds.append(msg)       # a removed stream's range comes free soon
            elif msg.kind in ("add_source", "remove_source"):
                self._answer(msg)
        if self.link.orphaned:             # the Python process that owned the pipeline is gone
            self.interrupted = self.interrupted or signal.SIGTERM

    def _done(self) -> bool:
        """Every stream has ended and, for a library pipeline, its iterator holds every result
        (the postprocessor keeps handing them over until then)."""
        return self.finished and (self.link is None or self.link.drained >= len(self.layout.streams))

    def _end_stream(self, sid: int) -> None:
        self.ended.add(sid)
        self.metrics.end_stream(sid)
        self.finished = len(self.ended) == len(self.ledgers)

    def run(self) -> Outcome:
        """Run the pipeline; always stops every process and removes pools and sockets.

        Ctrl-C / SIGTERM only set a flag from here on (also while the caller writes the report);
        stages are spawned after the signals are unblocked, so they inherit a clean mask.
        """
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        if self.interrupted:                  # pressed during the checks: nothing was started
            return Outcome(EXIT_INTERRUPTED, f"interrupted by signal {self.interrupted}")
        dashboard = self._dashboard()
        try:
            self._allocate()
            self._start_all()
            dashboard.start()
            next_draw = next_publish = 0.0
            deadline = time.monotonic() + self.duration_s if self.duration_s > 0 else None
            while not self._done() and not self.interrupted and not self.failure and not self.stop_requested:
                self._receive(50)
                self._watch()
                self._serve_link()
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                draw = now >= next_draw and dashboard.due()
                publish = (self.exporter is not None or self.cfg.output.status or self.link is not None) \
                    and now >= next_publish
                if draw or publish:
                    snapshot = self.metrics.snapshot()      # one snapshot for every view
                    if draw:
                        dashboard.update(snapshot)
                        next_draw = now + 1.0 / self.cfg.dashboard.refresh_hz
                    if publish:
                        self._publish(snapshot)
                        next_publish = now + PUBLISH_S
            self.metrics.set_state("interrupted" if self.interrupted else "failed" if self.failure
                                   else "stopped" if self.stop_requested and not self.finished else "finished")
            normal_end = not (self.interrupted or self.failure)
            self._stop_all(drain_s=self.cfg.output.mqtt.flush_timeout_s if normal_end and self.cfg.output.mqtt.host
                           else 0.0)
            dashboard.update(self.metrics.snapshot())       # the last line shows the final count
        except Stopped as exc:
            self._stop_all()
            return Outcome(EXIT_OK, str(exc))
        except OvstreamError as exc:
            self._stop_all()
            code = EXIT_INTERRUPTED if self.interrupted else exc.exit_code
            if code == EXIT_INTERRUPTED:
                return Outcome(code, f"interrupted by signal {self.interrupted}")
            return Outcome(code, str(exc))
        finally:
            if self.link is not None:
                self._refuse_waiting()
            dashboard.stop()
            self._cleanup()
        snapshot = self.metrics.snapshot()
        self._publish(snapshot)                           # the last scrape reads the report's figures
        report = snapshot.to_dict()
        report["restarts"] = {c.name: c.restarts for c in self.children.values()}
        if self.interrupted:
            return Outcome(EXIT_INTERRUPTED, f"interrupted by signal {self.interrupted}", report)
        if self.failure:
            report["failure"] = self.failure
            return Outcome(EXIT_FAILED, self.failure, report)
        errors = report.get("accounting", {}).get("errors", 0)
        failed = [row.name for row in snapshot.streams if row.state == "failed"]
        problems = [f"{errors} frames failed"] if errors else []
        if failed:                  # e.g. a reader that broke off: its stream ended early, maybe without a record
            problems.append(f"stream(s) {', '.join(failed)} failed (see the decoder logs)")
        return Outcome(EXIT_FAILED if problems else EXIT_OK, "; ".join(problems), report)

    def _publish(self, snapshot) -> None:
        """Hand the snapshot to /metrics, to the library pipeline that owns the run and, with
        ``[output] status``, to ``status.json`` (written
        whole, then renamed over the last one, so a reader never sees half of it)."""
        if self.exporter is not None:
            self.exporter.publish(snapshot)
        if self.link is not None:
            self.link.send("snapshot", snapshot.to_dict())
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
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        self.launcher.close()
        if hasattr(self, "control"):
            self.control.close(0)
            self.zmq.term()
        for spec in getattr(self, "pools", {}).values():
            SlotPool.unlink(spec)
        if hasattr(self, "run_dir"):
            SlotPool.remove_run(self.run_dir.run_id)     # a killed worker's output pool file
            self.run_dir.remove()
