"""What every stage process shares: its context, the control channel, stats and shutdown.

A stage is forked from the supervisor (decoders, preprocessor, postprocessor) or started as
``python -m workers.<role> NAME`` (inference workers), which reads the path of its context file
on stdin (see :mod:`engine.control.launch`). The context (JSON across an exec, no pickle) holds the run
config, endpoints, pool specs, the stage's log file and, after a crash, what to resume. The
stage talks to the supervisor over one DEALER socket: READY once started, STATS every heartbeat,
and it receives commands on the same socket, one message type each (StartMsg, StopMsg, ...),
which :class:`Stage` dispatches by type to the handlers registered for them.

:class:`StageLoop` is the loop every stage runs, over one poller: a role subclasses it, opens its
sockets with :meth:`StageLoop.socket`, registers a handler per socket (:meth:`StageLoop.watch`)
and per command (:meth:`StageLoop.on_command`), and fills in what a turn does besides.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from engine.config import RunConfig
from engine.core.errors import OvstreamError, describe
from engine.observe.logs import configure_stage, flush_output
from engine.observe.metrics import LatencyRecorder
from engine.protocol.channels import make_socket, pending
from engine.protocol.context import StageContext
from engine.protocol.messages import (
    FatalMsg,
    Message,
    MessageError,
    ReadyMsg,
    StartMsg,
    StatsMsg,
    StopMsg,
    decode,
)

_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def own_threads_cpu_s() -> float:
    """CPU seconds of this process's live threads that Python or ZeroMQ started: the stage's own
    loop and its messaging. The rest is a native library's pool (OpenVINO's streams in an
    inference worker), counted apart so that its threads' coming and going cannot blur this."""
    python_threads = {t.native_id for t in threading.enumerate()}
    ticks = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                stat = f.read()
        except OSError:                    # the thread has just ended
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(tid) in python_threads or name.startswith("ZMQbg/"):
            ticks += int(fields[11]) + int(fields[12])     # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class Stage:
    """The control side of a stage process: handshake, heartbeats, commands, stop flag."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.zmq: zmq.Context = zmq.Context.instance()
        self.control = make_socket(self.zmq, zmq.DEALER, identity=ctx.name, connect=ctx.endpoints["control"])
        self.latency = LatencyRecorder()
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, float] = {}
        self.stopping = False
        self.started = False
        self.commands: dict[type[Message], Callable[[Any], None]] = {   # command type → its handler
            StopMsg: self._on_stop, StartMsg: self._on_start}
        self.before_stats: list[Callable[[], None]] = []   # fill counters/gauges once per heartbeat, not per frame
        self.bad_messages = 0
        self._next_stats = 0.0
        self._heartbeat = ctx.config.pipeline.heartbeat_s

    def request_stop(self) -> None:
        """End the loop after this turn (SIGTERM)."""
        self.stopping = True

    def _on_stop(self, _msg: StopMsg) -> None:
        self.stopping = True

    def _on_start(self, _msg: StartMsg) -> None:
        self.started = True

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def declare(self, *names: str) -> None:
        """Counters this stage reports, shown as 0 until they move."""
        for name in names:
            self.counters.setdefault(name, 0)

    def send(self, msg: Message) -> None:
        self.control.send(msg.encode())

    def ready(self, **info: object) -> None:
        """The handshake: tell the supervisor this stage is up, with what it learned."""
        self.gauges["ready_cpu_s"] = round(time.process_time(), 3)   # start-up's CPU (imports, compile)
        self.send(ReadyMsg(self.ctx.name, os.getpid(), dict(info), self.ctx.generation))
        self.send_stats()

    def send_stats(self) -> None:
        for fill in self.before_stats:
            fill()
        self.counters["bad_messages"] = self.bad_messages
        self.gauges["cpu_s"] = round(time.process_time(), 3)     # exact CPU seconds, also after exit
        self.send(StatsMsg(self.ctx.name, self.ctx.role, os.getpid(), self.ctx.device, dict(self.counters),
                           dict(self.gauges), self.latency.drain(), self.ctx.generation))
        self._next_stats = time.monotonic() + self._heartbeat

    def tick(self) -> None:
        """Call every loop turn: heartbeat when due, parent watch, control messages."""
        now = time.monotonic()
        if now >= self._next_stats:
            self.send_stats()
            if os.getppid() != self.ctx.supervisor_pid:   # orphaned: the supervisor is gone
                self.stopping = True
        for data in pending(self.control):
            msg = self.decode(data)
            if msg is not None:
                self.on_control(msg)

    def poll_ms(self, seconds: float) -> int:
        """A loop's poll timeout: ``seconds``, or 0 once stopping. The loops read a stop in
        :meth:`tick`, just before they poll: their last turn must not wait a heartbeat for
        nothing (it cost every stage 0.25 s at the end of each run)."""
        return 0 if self.stopping else int(seconds * 1000)

    def on_control(self, msg: Message) -> None:
        """A command, to the handler registered for its type (one this stage does not take is ignored)."""
        handler = self.commands.get(type(msg))
        if handler is not None:
            handler(msg)

    def decode(self, data: bytes) -> Message | None:
        """Decode a header; a malformed one is counted and dropped, never fatal."""
        try:
            return decode(data)
        except MessageError as exc:
            self.bad_messages += 1
            log.warning("rejected message: %s", exc)
            return None

    def wait_for_start(self) -> None:
        """Heartbeat until the supervisor says start (all stages are up) or stop."""
        while not self.started and not self.stopping:
            self.control.poll(int(self._heartbeat * 1000))
            self.tick()

    def close(self) -> None:
        try:
            self.send_stats()
        except zmq.ZMQError:
            pass
        self.control.close(linger=1000)      # the last acks and stats reach the supervisor before the exit


Source = zmq.Socket | int          # what a poller watches: a socket or a file descriptor


class StageLoop:
    """The loop a stage process runs, the same for every role: heartbeat and commands
    (:meth:`Stage.tick`), one poll over every watched socket, each ready socket's handler, then
    :meth:`after_poll`; stop and close.

    A role subclasses it: its ``__init__`` opens its sockets with :meth:`socket` (closed by
    :meth:`close`), names a handler for each input with :meth:`watch` and for each command type
    with :meth:`on_command`; it overrides :meth:`start` (the handshake), :meth:`wait_s`,
    :meth:`after_poll`, :meth:`fill_stats` and :meth:`close` where it has something to add.
    Handlers are called in the order they were watched.
    """

    def __init__(self, ctx: StageContext, stage: Stage) -> None:
        self.ctx = ctx
        self.stage = stage
        self.cfg = ctx.config
        self._sockets: list[zmq.Socket] = []
        self._handlers: dict[Source, Callable[[], None]] = {}
        self._poller = zmq.Poller()
        self._poller.register(stage.control, zmq.POLLIN)   # a command (a stop) wakes the loop at once

    def socket(self, kind: int, **options: Any) -> zmq.Socket:
        """A socket of this stage (:func:`engine.protocol.channels.make_socket`), closed by :meth:`close`."""
        sock = make_socket(self.stage.zmq, kind, **options)
        self._sockets.append(sock)
        return sock

    def watch(self, source: Source, handler: Callable[[], None]) -> None:
        """Call ``handler`` in each loop turn that finds ``source`` readable."""
        self._poller.register(source, zmq.POLLIN)
        self._handlers[source] = handler

    def on_command(self, kind: type[Message], handler: Callable[[Any], None]) -> None:
        """Call ``handler(msg)`` for each command of type ``kind`` from the supervisor."""
        self.stage.commands[kind] = handler

    def start(self) -> None:
        """Before the first turn: the handshake (and whatever must precede the loop)."""
        self.stage.ready()

    def wait_s(self) -> float:
        """How long this turn's poll may wait for input (a stop makes it 0)."""
        return self.cfg.pipeline.heartbeat_s

    def poll(self, timeout_ms: int) -> dict[Source, int]:
        """The watched sources that are readable, waiting up to ``timeout_ms``."""
        return dict(self._poller.poll(timeout_ms))

    def after_poll(self) -> None:
        """A turn's work after its handlers, whatever the poll found."""

    def fill_stats(self) -> None:
        """Update the stage's counters and gauges, once per heartbeat (not per frame)."""

    def run(self) -> None:
        """:meth:`start`, the turns until a stop, then :meth:`close` (also after an error)."""
        self.stage.before_stats.append(self.fill_stats)
        try:
            self.start()
            while not self.stage.stopping:
                self.stage.tick()
                events = self.poll(self.stage.poll_ms(self.wait_s()))
                for source, handler in self._handlers.items():
                    if source in events:
                        handler()
                self.after_poll()
        finally:
            self.close()

    def close(self) -> None:
        """Close this stage's sockets (LINGER 0); a role closes its own resources around this."""
        for sock in self._sockets:
            sock.close(0)


def die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the stage still notices a changed parent pid at its next heartbeat


def redirect_output(log_file: str) -> None:
    """Make ``log_file`` (appended to) this process's stdout and stderr, file descriptors and
    ``sys`` streams alike, so that whatever a library prints lands there too."""
    if not log_file:
        return
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)


def serve(ctx: StageContext, run: Callable[[StageContext, Stage], None],
          held: Sequence[logging.LogRecord] = ()) -> int:
    """Run a stage in this process, however it was started; its exit code. A fatal error is told
    to the supervisor (a user mistake: code 2; a bug: 1, and the trace to the log). ``held``:
    records logged before the log file was known, written to it first."""
    configure_stage(ctx.name, ctx.log_level)
    for record in held:
        if record.levelno >= ctx.log_level:
            logging.getLogger(record.name).handle(record)
    log.debug("pid %d, generation %d", os.getpid(), ctx.generation)
    if os.getppid() != ctx.supervisor_pid:       # the supervisor died before this stage was set to die with it
        return 1
    stage = Stage(ctx)
    signal.signal(signal.SIGTERM, lambda *_: stage.request_stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides; Ctrl-C reaches it
    signal.pthread_sigmask(signal.SIG_SETMASK, set())   # the command held Ctrl-C / SIGTERM back at start
    code = 0
    try:
        run(ctx, stage)
    except OvstreamError as exc:    # told first: the log may be on the disk that just filled up
        stage.send(FatalMsg(ctx.name, str(exc), usage=True, generation=ctx.generation))
        log.error("%s", exc)
        code = 2
    except Exception as exc:  # a bug: one line to the supervisor, which restarts it, and the trace to the log
        stage.send(FatalMsg(ctx.name, describe(exc), generation=ctx.generation))
        log.exception("%s failed", ctx.name)
        code = 1
    finally:
        stage.close()
        zmq.Context.instance().term()
    logging.shutdown()
    flush_output()
    return code


class _Held(logging.Handler):
    """Keeps the records of a stage's work before its log file is known."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


Prepare = Callable[[RunConfig, str, int], Callable[[StageContext, Stage], None]]


def stage_main(prepare: Prepare) -> None:
    """Entry of an exec'd stage, ``python -m workers.inference NAME`` (see engine/control/launch.py; the
    other roles are forked). Two lines come on stdin: the run's config with this stage's device
    and batch, then the path of its context file, which the supervisor writes a little later:
    ``prepare(config, device, batch)`` does what needs no context meanwhile (compiles the model)
    and returns the stage's run function. Without a line (stdin closed: the run ended first) it
    leaves quietly."""
    die_with_parent()
    early = sys.stdin.readline()
    if not early:
        os._exit(0)
    held = _Held()
    logging.getLogger().addHandler(held)
    logging.getLogger().setLevel(logging.DEBUG)
    told = json.loads(early)
    run = prepare(RunConfig.from_dict(told["config"], origin="stage config"), told["device"], told["batch"])
    path = sys.stdin.readline().strip()
    if not path:
        os._exit(0)
    with open(path, encoding="utf-8") as fh:
        ctx = StageContext.from_json(fh.read())
    redirect_output(ctx.log_file)
    # Everything is closed and flushed: skip the interpreter's teardown (unloading OpenVINO's
    # plugins, collecting every module), which took longer than the stage's own shutdown.
    os._exit(serve(ctx, run, held.records))
