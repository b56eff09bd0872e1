"""Supervisor: checks the config, starts the stage processes, watches them, restarts, cleans up.

It owns everything that must outlive a crashed stage: the shared-memory pools, the private run
directory with the socket files, and the ledger of frame ids written to the sinks. A dead
inference worker is restarted alone (the preprocessor re-sends the batches it held); any other
dead stage restarts the pipeline's stages from the ledger, so a file source still yields every
frame exactly once. Ctrl-C / SIGTERM stop everything within about a second.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import openvino as ov
import zmq

from engine.adapters import create_adapter
from engine.channels import RunDir, make_socket
from engine.config import REPO_ROOT, RunConfig
from engine.dashboard import Dashboard
from engine.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, OvstreamError
from engine.ledger import FrameLedger
from engine.messages import AckMsg, ControlMsg, FatalMsg, Message, ReadyMsg, StatsMsg, decode, MessageError
from engine.metrics import MetricsAggregator
from engine.model import InputInfo, check_devices, input_info, output_shapes, read_model
from engine.shm import PoolSpec, SlotPool
from engine.sinks import JsonlSink
from engine.sources import is_live_uri, open_source
from workers.runtime import StageContext

READY_TIMEOUT_S = 300.0       # compiling for a GPU can take minutes the first time
STOP_GRACE_S = 1.0
HANG_TIMEOUT_S = 30.0       # a live source may block this long while it reconnects


@dataclass
class Child:
    """One stage process and what the supervisor knows of it."""

    name: str
    role: str
    device: str = ""
    proc: subprocess.Popen | None = None
    ready: bool = False
    restarts: int = 0
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """How a run ended."""

    exit_code: int
    message: str = ""
    report: dict = field(default_factory=dict)


def preflight(cfg: RunConfig) -> tuple[InputInfo, bool]:
    """Everything that can be wrong before a process starts: devices, model, adapter, source."""
    core = ov.Core()
    check_devices(core, cfg.inference.devices)
    model = read_model(core, cfg.model.path)
    info = input_info(model, cfg.model.params)
    create_adapter(cfg.model).check_outputs(output_shapes(model))
    uri = cfg.source.uri
    if not is_live_uri(uri):
        open_source(cfg.source).close()     # a missing or empty folder, a bad file type: one line now
    live = is_live_uri(uri) if cfg.source.live == "auto" else cfg.source.live == "yes"
    return info, live


class Supervisor:
    """Runs one pipeline to completion (or interruption)."""

    def __init__(self, cfg: RunConfig, dashboard: bool = True) -> None:
        self.cfg = cfg
        self.info, self.live = preflight(cfg)
        self.show_dashboard = dashboard and cfg.dashboard.enabled
        self.metrics = MetricsAggregator()
        self.metrics.watch("supervisor", os.getpid(), "supervisor")
        self.children: dict[str, Child] = {}
        self.completed = FrameLedger()
        self.acked_ok = 0
        self.acked_errors = 0
        self.frame_ids = 0          # distinct frame ids the source produced (decoder high-water mark)
        self.generation = 0
        self.started = False        # every stage said READY and was told to start
        self.finished = False
        self.interrupted = 0
        self.failure = ""
        self.output_dir = Path(cfg.output.dir)

    # ---- set-up -----------------------------------------------------------------------------
    def _allocate(self) -> None:
        cfg = self.cfg
        RunDir.sweep_stale()
        self.run_dir = RunDir()
        batch = cfg.inference.batch
        workers = len(cfg.inference.devices)
        input_slots = cfg.pipeline.input_slots or workers * (cfg.inference.nireq or 4) + 2
        raw_slots = cfg.pipeline.raw_slots
        if cfg.output.images or cfg.output.video:        # raw frames are held until drawn
            raw_slots = max(raw_slots, input_slots * batch + 4)
        raw_bytes = cfg.pipeline.max_frame_width * cfg.pipeline.max_frame_height * 3
        self.pools: dict[str, PoolSpec] = {}
        self.pools["raw"] = SlotPool.create(self.run_dir.run_id, "raw", raw_bytes, raw_slots)
        self.pools["input"] = SlotPool.create(self.run_dir.run_id, "input", batch * self.info.frame_bytes, input_slots)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.output_dir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.zmq = zmq.Context()
        self.control = make_socket(self.zmq, zmq.ROUTER, bind=self.run_dir.endpoint("control"), hwm=100_000)
        self.children = {"postprocessor": Child("postprocessor", "postprocessor"),
                         "preprocessor": Child("preprocessor", "preprocessor")}
        for i, device in enumerate(cfg.inference.devices):
            self.children[f"inference-{i}"] = Child(f"inference-{i}", "inference", device)
        self.children["decoder"] = Child("decoder", "decoder")

    def _context(self, child: Child) -> StageContext:
        return StageContext(
            role=child.role, name=child.name, generation=self.generation,
            endpoints=self.run_dir.endpoints(), pools=self.pools, config=self.cfg,
            input={"height": self.info.height, "width": self.info.width, "batch": self.cfg.inference.batch,
                   "live": self.live},
            device=child.device, completed=self.completed.ranges(), supervisor_pid=os.getpid())

    def _spawn(self, child: Child) -> None:
        ctx_path = self.run_dir.path / f"{child.name}.json"
        ctx_path.write_text(self._context(child).to_json(), encoding="utf-8")
        log = open(self.log_dir / f"{child.name}.log", "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        child.proc = subprocess.Popen([sys.executable, "-m", f"workers.{child.role}", str(ctx_path)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True, cwd=os.getcwd())
        log.close()
        child.ready = False
        child.last_seen = time.monotonic()

    # ---- messages ---------------------------------------------------------------------------
    def _send(self, name: str, command: str, arg: str = "") -> None:
        try:
            self.control.send_multipart([name.encode(), ControlMsg(command, arg, self.generation).encode()],
                                        zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # a peer that is gone gets nothing; its death is handled on its own

    def _receive(self, timeout_ms: int) -> None:
        if not self.control.poll(timeout_ms):
            return
        while self.control.poll(0):
            frames = self.control.recv_multipart()
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
            if msg.role == "decoder":
                position = msg.gauges.get("next_frame_id", 0)
                if isinstance(position, int) and position > self.frame_ids:
                    self.frame_ids = position
                    self.metrics.set_accounting(self.acked_ok, self.acked_errors, self.frame_ids)
        elif isinstance(msg, ReadyMsg) and child is not None:
            child.ready = True
            self.metrics.note_ready(msg.process, msg.pid, msg.info)
            if self.started:
                self._send(child.name, "start")
        elif isinstance(msg, AckMsg):                   # written is written, whatever the generation
            self.acked_ok += self.completed.add(msg.frame_ids)
            self.acked_errors += self.completed.add(msg.error_ids)
            if msg.frame_ids or msg.error_ids:           # a written frame was certainly read
                self.frame_ids = max(self.frame_ids, max(msg.frame_ids + msg.error_ids) + 1)
            self.metrics.set_accounting(self.acked_ok, self.acked_errors, self.frame_ids)
            if msg.finished and msg.generation == self.generation:
                self.finished = True
        elif isinstance(msg, FatalMsg) and child is not None:
            first = msg.error.strip().splitlines()[0] if msg.error.strip() else "unknown error"
            print(f"[supervisor] {child.name}: {first}", file=sys.stderr, flush=True)
            if msg.usage:                               # restarting cannot fix a user mistake
                self.failure = f"{child.name}: {first}"

    # ---- lifecycle --------------------------------------------------------------------------
    def _start_all(self) -> None:
        for child in self.children.values():
            self._spawn(child)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(c.ready for c in self.children.values()):
            self._receive(100)
            if self.failure:
                raise OvstreamError(self.failure)
            for child in self.children.values():
                if child.proc is not None and child.proc.poll() is not None and not child.ready:
                    raise OvstreamError(f"{child.name} exited during start-up (code {child.proc.returncode}); "
                                        f"see {self.log_dir / (child.name + '.log')}")
            if self.interrupted or time.monotonic() > deadline:
                raise OvstreamError("interrupted during start-up" if self.interrupted else
                                    f"stages not ready after {READY_TIMEOUT_S:.0f}s")
        self.started = True
        self.metrics.start()
        for child in self.children.values():
            self._send(child.name, "start")

    def _stop_all(self) -> None:
        for child in self.children.values():
            self._send(child.name, "stop")
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(c.proc and c.proc.poll() is None for c in self.children.values()):
            self._receive(20)
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        self._receive(0)

    def _on_death(self, child: Child) -> None:
        child.restarts += 1
        self.metrics.note_restart(child.name)
        code = child.proc.returncode if child.proc else None
        if child.restarts > self.cfg.pipeline.max_restarts:
            self.failure = f"{child.name} died {child.restarts} times (last exit code {code}); giving up"
            return
        print(f"[supervisor] {child.name} exited with code {code}; restarting", file=sys.stderr, flush=True)
        if child.role == "inference":
            self._send("preprocessor", "worker_down", f"{child.name}@{child.proc.pid}")
            self._spawn(child)
            return
        self._restart_pipeline()

    def _restart_pipeline(self) -> None:
        """Any stage but an inference worker died: restart all stages from the ledger."""
        self._stop_all()
        if self.cfg.output.jsonl:
            self.completed.add(JsonlSink.recover(self.output_dir / "results.jsonl"))
        self.generation += 1
        for child in self.children.values():
            self._spawn(child)

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None:
                continue
            if child.proc.poll() is not None:
                self._on_death(child)
            elif child.ready and now - child.last_seen > HANG_TIMEOUT_S:
                print(f"[supervisor] {child.name} silent for {HANG_TIMEOUT_S:.0f}s; killing it", file=sys.stderr)
                child.proc.kill()
                child.proc.wait()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.interrupted = signum

    def run(self) -> Outcome:
        """Run the pipeline; always stops every process and removes pools and sockets.

        Ctrl-C / SIGTERM only set a flag from here on (also while the caller writes the report);
        stages are spawned after the signals are unblocked, so they inherit a clean mask.
        """
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        dashboard = Dashboard(self.cfg.dashboard.refresh_hz) if self.show_dashboard else None
        self._allocate()
        try:
            self._start_all()
            if dashboard:
                dashboard.start()
            next_draw = 0.0
            while not self.finished and not self.interrupted and not self.failure:
                self._receive(50)
                self._watch()
                now = time.monotonic()
                if dashboard and now >= next_draw:
                    dashboard.update(self.metrics.snapshot())
                    next_draw = now + 1.0 / max(self.cfg.dashboard.refresh_hz, 0.5)
            self.metrics.set_state("finished" if self.finished else "interrupted" if self.interrupted else "failed")
            self._stop_all()
        except OvstreamError as exc:
            self._stop_all()
            return Outcome(EXIT_INTERRUPTED if self.interrupted else EXIT_USAGE, str(exc))
        finally:
            if dashboard:
                dashboard.stop()
            self._cleanup()
        snapshot = self.metrics.snapshot()
        report = snapshot.to_dict()
        report["restarts"] = {c.name: c.restarts for c in self.children.values()}
        if self.interrupted:
            return Outcome(EXIT_INTERRUPTED, f"interrupted by signal {self.interrupted}", report)
        if self.failure:
            return Outcome(EXIT_FAILED, self.failure, report)
        errors = report.get("accounting", {}).get("errors", 0)
        return Outcome(EXIT_FAILED if errors else EXIT_OK, f"{errors} frames failed" if errors else "", report)

    def _cleanup(self) -> None:
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        if hasattr(self, "control"):
            self.control.close(0)
            self.zmq.term()
        for spec in getattr(self, "pools", {}).values():
            SlotPool.unlink(spec)
        if hasattr(self, "run_dir"):
            self.run_dir.remove()
