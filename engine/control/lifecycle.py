"""The stage processes of a run: started, waited for, watched, restarted and stopped.

:class:`Stages` knows each stage as a :class:`Child` (its process, whether it said READY, its
restarts) and talks to them over the :class:`ControlChannel`. A stage that dies is restarted on
its own when that is safe: an inference worker at once (the preprocessor re-sends the batches it
held), a decoder once the preprocessor has fenced off its frames (unless frames are annotated,
when raw frames are still held downstream); anything else needs every stage restarted, which is
the supervisor's call (:meth:`Stages.watch`). A stage that reported a user mistake (exit code 2)
is never restarted, and one that keeps dying ends the run. :class:`RunState` is what the
supervisor's parts share of the run as a whole.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from engine.config import RunConfig
from engine.control.launch import StageProcess, inference_name
from engine.core.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, OvstreamError
from engine.io.streams import Layout
from engine.observe.metrics import MetricsAggregator
from engine.protocol.channels import make_socket, pending
from engine.protocol.messages import (
    DecoderDownMsg,
    Message,
    MessageError,
    StartMsg,
    StopMsg,
    WorkerDownMsg,
    decode,
)

READY_TIMEOUT_S = 300.0       # compiling for a GPU can take minutes the first time
STOP_GRACE_S = 1.0
REPORT_WAIT_S = 2.0         # how long the FatalMsg of a stage that exited with code 2 may take to arrive
HANG_TIMEOUT_S = 30.0       # a live source may block this long while it reconnects

logger = logging.getLogger("engine.control.supervisor")     # the supervisor's lines: "[supervisor] …"


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
class RunState:
    """The run as a whole, as every part of the supervisor sees it."""

    generation: int = 0             # one more at each restart of every stage; stale messages are told apart
    started: bool = False           # every stage said READY and was told to start
    failure: str = ""               # why the run fails (set once: the first reason stays)
    interrupted: int = 0            # the signal (Ctrl-C, SIGTERM) that stops it
    stop_requested: bool = False    # the library pipeline said stop


class StartFailure(OvstreamError):
    """A stage kept dying before it was ready: not a user mistake (exit code 1)."""

    exit_code = EXIT_FAILED


class Stopped(OvstreamError):
    """The library pipeline that owns the run stopped it before it had started."""

    exit_code = EXIT_OK


def decoder_index(name: str) -> int:
    """``decoder-3`` → 3."""
    return int(name.rsplit("-", 1)[-1])


def stage_children(cfg: RunConfig, layout: Layout) -> list[Child]:
    """The stages of a run: postprocessor, preprocessor, one inference worker per device, the decoders."""
    children = [Child("postprocessor", "postprocessor"), Child("preprocessor", "preprocessor")]
    children += [Child(inference_name(i), "inference", device) for i, device in enumerate(cfg.inference.devices)]
    children += [Child(layout.decoder_name(d), "decoder") for d in range(layout.decoders)]
    return children


class ControlChannel:
    """The supervisor's end of the control channel, a ROUTER the stages connect to by name:
    commands out, and every message in handed to ``on_message(sender, message)``. Until
    :meth:`bind` (and after :meth:`close`) it sends and receives nothing."""

    def __init__(self, on_message: Callable[[str, Message], None]) -> None:
        self.on_message = on_message
        self._zmq: zmq.Context | None = None
        self._socket: zmq.Socket | None = None

    def bind(self, endpoint: str) -> None:
        self._zmq = zmq.Context()
        self._socket = make_socket(self._zmq, zmq.ROUTER, bind=endpoint, hwm=100_000)

    def send(self, name: str, msg: Message) -> None:
        """A command to stage ``name``."""
        if self._socket is None:
            return
        try:
            self._socket.send_multipart([name.encode(), msg.encode()], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # a peer that is gone gets nothing; its death is handled on its own

    def receive(self, timeout_ms: int) -> None:
        """Hand on what arrives within ``timeout_ms`` (malformed messages are dropped)."""
        if self._socket is None or not self._socket.poll(timeout_ms):
            return
        for frames in pending(self._socket, multipart=True):
            if len(frames) != 2:
                continue
            try:
                msg = decode(frames[1])
            except MessageError:
                continue
            self.on_message(frames[0].decode(errors="replace"), msg)

    def drain(self) -> None:
        """Take what is still on its way, e.g. the last acks and stats of stages that stopped."""
        while self._socket is not None and self._socket.poll(20):
            self.receive(0)

    def close(self) -> None:
        if self._socket is not None and self._zmq is not None:
            self._socket.close(0)
            self._zmq.term()
        self._socket = self._zmq = None


class Stages:
    """The stage processes of one run, by name. ``launch`` starts a child's process (the
    supervisor writes its context); messages are taken through ``channel`` while waiting."""

    def __init__(self, children: list[Child], launch: Callable[[Child], StageProcess], channel: ControlChannel,
                 state: RunState, metrics: MetricsAggregator, max_restarts: int, log_dir: Path,
                 annotating: bool) -> None:
        self.children = {child.name: child for child in children}
        self.launch = launch
        self.channel = channel
        self.state = state
        self.metrics = metrics
        self.max_restarts = max_restarts
        self.log_dir = log_dir
        self.annotating = annotating      # raw frames are held downstream: a lone decoder cannot restart

    def seen(self, name: str) -> Child | None:
        """The stage a message came from (it is alive), or None."""
        child = self.children.get(name)
        if child is not None:
            child.last_seen = time.monotonic()
        return child

    def spawn(self, child: Child) -> None:
        child.proc = self.launch(child)
        logger.debug("%s started: pid %d, generation %d", child.name, child.proc.pid, self.state.generation)
        child.ready = False
        child.last_seen = time.monotonic()

    def start_all(self, serve: Callable[[], None]) -> None:
        """Start every stage (the slowest first) and wait until each says READY, calling ``serve``
        (the library link) between waits; then tell them to start. A stage that dies before it is
        ready is retried; a reported mistake, a signal or a stop ends the wait with an error."""
        for child in sorted(self.children.values(), key=lambda c: c.role != "inference"):
            self.spawn(child)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(c.ready for c in self.children.values()):
            self.channel.receive(100)
            if self.state.failure:
                raise OvstreamError(self.state.failure)
            for child in self.children.values():
                if child.proc is not None and child.proc.poll() is not None and not child.ready:
                    self._on_start_death(child)
            serve()
            if self.state.interrupted:
                raise OvstreamError("interrupted during start-up")
            if self.state.stop_requested:
                raise Stopped("stopped during start-up")
            if time.monotonic() > deadline:
                raise StartFailure(f"stages not ready after {READY_TIMEOUT_S:.0f}s: "
                                   f"{', '.join(c.name for c in self.children.values() if not c.ready)}")
        self.state.started = True
        self.metrics.start()
        for child in self.children.values():
            self.channel.send(child.name, StartMsg(self.state.generation))

    def _on_start_death(self, child: Child) -> None:
        """A stage died before it was ready: a user mistake it reported stops the run (exit 2);
        anything else is retried like a crash, up to ``max_restarts`` (then exit 1)."""
        self._await_reported(child)
        if self.state.failure:
            raise OvstreamError(self.state.failure)
        code = child.proc.returncode if child.proc else None
        child.restarts += 1
        self.metrics.note_restart(child.name)
        log = self.log_dir / f"{child.name}.log"
        if child.restarts > self.max_restarts:
            raise StartFailure(f"{child.name} could not start: exited {child.restarts} times during start-up "
                               f"(last exit code {code}); see {log}")
        logger.warning("%s exited during start-up with code %s; restarting", child.name, code)
        self.spawn(child)

    def _await_reported(self, child: Child) -> None:
        """Take the FatalMsg a dead stage sent just before it exited. Exit code 2 says it reported a
        user mistake or a full disk, which a restart cannot fix: its message may still be on its way
        (a poll that finds nothing yet is no answer), so it is waited for, briefly, and the run fails
        with it (or with the exit code, if it never comes) instead of restarting the stage."""
        self.channel.receive(0)
        code = child.proc.returncode if child.proc else None
        deadline = time.monotonic() + REPORT_WAIT_S
        while code == EXIT_USAGE and not self.state.failure and time.monotonic() < deadline:
            self.channel.receive(20)
        if code == EXIT_USAGE and not self.state.failure:
            self.state.failure = (f"{child.name} stopped on an error (exit code {code}); "
                                  f"see {self.log_dir / child.name}.log")

    def watch(self, restart_all: Callable[[], None]) -> None:
        """Handle the stages that died (:meth:`_on_death`; ``restart_all`` where only a restart of
        every stage will do), and kill a ready one silent for ``HANG_TIMEOUT_S`` (found dead next time)."""
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None:
                continue
            if child.proc.poll() is not None:
                if self._on_death(child):
                    restart_all()
            elif child.ready and now - child.last_seen > HANG_TIMEOUT_S:
                logger.warning("%s silent for %.0fs; killing it", child.name, HANG_TIMEOUT_S)
                child.proc.kill()
                child.proc.wait()

    def _on_death(self, child: Child) -> bool:
        """A stage died while running: restart it alone where that is safe. True when every stage
        must restart instead; the run's failure is set when a restart cannot help."""
        self._await_reported(child)
        if self.state.failure:
            return False                                # a restart cannot fix what it reported
        child.restarts += 1
        self.metrics.note_restart(child.name)
        pid, code = (child.proc.pid, child.proc.returncode) if child.proc else (0, None)
        if child.restarts > self.max_restarts:
            self.state.failure = f"{child.name} died {child.restarts} times (last exit code {code}); giving up"
            return False
        logger.warning("%s exited with code %s; restarting", child.name, code)
        if child.role == "inference":
            self.channel.send("preprocessor", WorkerDownMsg(f"{child.name}@{pid}", self.state.generation))
            self.spawn(child)
            return False
        if child.role == "decoder" and not self.annotating and self.state.started:
            child.proc, child.fenced = None, True        # respawned once the preprocessor has fenced it
            self.channel.send("preprocessor",
                              DecoderDownMsg(decoder_index(child.name), child.restarts, self.state.generation))
            return False
        return True

    def respawn_all(self) -> None:
        """Start every stage again (after :meth:`stop_all`, in a new generation)."""
        for child in self.children.values():
            child.fenced = False
            self.spawn(child)

    def stop_all(self, drain_s: float = 0.0) -> None:
        """Stop every stage: ``stop``, then SIGKILL whatever still runs after the grace period
        (plus ``drain_s`` for the sinks to drain, e.g. MQTT records the broker has not confirmed)."""
        for child in self.children.values():
            self.channel.send(child.name, StopMsg(self.state.generation))
        deadline = time.monotonic() + STOP_GRACE_S + drain_s
        while time.monotonic() < deadline and any(c.proc and c.proc.poll() is None for c in self.children.values()):
            self.channel.receive(20)
        self.kill_all()
        self.channel.drain()         # what the stages sent on their way out: last acks and stats

    def kill_all(self) -> None:
        """SIGKILL every stage still running, and reap it."""
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()

    def restarts(self) -> dict[str, int]:
        return {c.name: c.restarts for c in self.children.values()}
