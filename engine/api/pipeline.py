"""The Python API: run the multiprocess engine from a script or notebook and iterate its results.

::

    with Pipeline("configs/default.toml", output="runs/api") as pipe:
        for result in pipe:                 # FrameResult, each stream in order, as they are ready
            print(result.stream, result.frame_id, len(result.detections or ()))
        print(pipe.stats().totals.avg_fps)

A :class:`Pipeline` starts one supervisor process (``python -m engine.api.service``), which runs the
same stages, pools, ledgers and sinks as ``ovstream run``; records come from the postprocessor on
a ZeroMQ socket (msgpack, :class:`~engine.protocol.messages.RecordMsg`), commands and snapshots travel on
a second one (a message type each: :mod:`engine.protocol.apilink`), both in a private (0700) run directory. Leaving
the ``with`` block, an exception or Ctrl-C in it, :meth:`Pipeline.close`, the end of a ``for``
loop that itself started a pipeline no ``with`` holds (a ``break`` included), garbage collection and the
interpreter's exit all stop every process of the run. A pipeline is used from one thread.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import zmq

from engine.config import RunConfig, load_config, merge_tables, model_from_file, resolve_model, resolve_streams
from engine.config.options import overrides_from
from engine.core import errors
from engine.core.errors import ConfigError, OvstreamError, PipelineError
from engine.core.results import FrameResult
from engine.model.detect import detect_model
from engine.observe.logs import stage_level
from engine.observe.metrics import Snapshot
from engine.protocol.apilink import API_REPLIES, api_messages
from engine.protocol.channels import RunDir, make_socket
from engine.protocol.messages import (
    AddSourceMsg,
    DrainedMsg,
    Message,
    MessageError,
    OutcomeMsg,
    RecordMsg,
    RemoveSourceMsg,
    RequestDoneMsg,
    RequestRefusedMsg,
    SeenMsg,
    SnapshotMsg,
    StartedMsg,
    StopRunMsg,
    decode,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

STOP_TIMEOUT_S = 10.0       # a stopping supervisor stops its stages within ~1 s and reports
POLL_MS = 100
SEEN_INTERVAL_S = 0.5       # how often the supervisor hears what the iterator has received
SPARE_STREAMS = 4           # streams a pipeline can add beyond its configured ones, by default
REQUEST_TIMEOUT_S = 30.0

# keyword → the `ovstream run` option it stands for (engine.config.options.overrides_from), and its default
_OPTIONS = {"source": None, "model": None, "adapter": None, "device": None, "nireq": None, "batch": None,
            "streams": None, "hint": None, "loop": None, "decoders": None, "output": None, "annotate": False,
            "video": False, "metrics_port": None}


def build_config(config: str | Path | RunConfig | dict | None = None, **options: Any) -> RunConfig:
    """The resolved config of a pipeline: a TOML path (default ``configs/default.toml``), a
    :class:`RunConfig` or a dict of its sections, with keyword options that mean what the
    options of ``ovstream run`` mean (``source`` a uri or a list of them, ``model``, ``adapter``,
    ``device`` one or a list, ``nireq``, ``batch``, ``streams``, ``hint``, ``loop``, ``decoders``,
    ``output``, ``annotate``, ``video``, ``metrics_port``)."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"Pipeline() got unknown option(s) {', '.join(unknown)} (known: {', '.join(_OPTIONS)})")
    values = {key: os.fspath(v) if isinstance(v, os.PathLike) else v for key, v in {**_OPTIONS, **options}.items()}
    for key in ("source", "device"):
        if isinstance(values[key], str):
            values[key] = [values[key]]
        elif values[key] is not None:
            values[key] = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in values[key]]
    overrides = overrides_from(argparse.Namespace(**values, no_dashboard=True, cluster=None))
    overrides.setdefault("dashboard", {})["enabled"] = False
    RunConfig.from_dict(overrides, origin="Pipeline options")      # a bad option is named as such
    if isinstance(config, RunConfig):
        config = config.to_dict()
    if isinstance(config, dict):
        merged = RunConfig.from_dict(merge_tables(config, overrides), origin="Pipeline config")
        cfg = resolve_model(resolve_streams(merged), detect_model, by_file=model_from_file(overrides))
    else:
        cfg = load_config(config, overrides, detect=detect_model)
    if values["loop"] is not None:
        for src in cfg.sources:
            src.loop = values["loop"]
    if cfg.cluster.address:
        raise ConfigError("[cluster] address: a Pipeline runs on this machine; spread streams over a Ray "
                          "cluster with `ovstream run --cluster`")
    return cfg




class Pipeline:
    """One run of the engine, driven from Python. See the module docstring.

    ``config`` and the keyword options: :func:`build_config`. Iterating yields
    :class:`~engine.core.results.FrameResult`\\ s, each stream's in frame order, as they are written;
    the iteration ends when every stream has ended (a live stream: when it is removed or lost),
    and raises :class:`~engine.core.errors.PipelineError` after the last result if the run could not
    go on. :meth:`start` (also ``with`` and the first iteration) runs the pre-flight checks and
    raises their one-line :class:`~engine.core.errors.OvstreamError` (``ConfigError``,
    ``ModelError``, ``DeviceError``, ...).
    """

    def __init__(self, config: str | Path | RunConfig | dict | None = None, *, max_streams: int = 0,
                 persistent: bool = False, view: bool = False, **options: Any) -> None:
        self.config = build_config(config, **options)
        self.persistent = persistent    # a service's: it runs on after every stream ended, until closed
        self.view = view                # the postprocessor publishes [output] view_fps JPEGs on view_endpoint
        self.view_endpoint = ""
        self.streams: list[str] = [s.name for s in self.config.sources]
        # streams open at once, counting those added later (raw slots are set aside for them)
        self.max_streams = max_streams or len(self.streams) + SPARE_STREAMS
        if self.max_streams < len(self.streams):
            raise ConfigError(f"max_streams = {max_streams} is fewer than the {len(self.streams)} streams configured")
        self._requests = 0
        self.outcome: dict | None = None       # exit_code, message, report: once the run is over
        self._proc: subprocess.Popen | None = None
        self._snapshot: Snapshot | None = None
        self._last: dict[str, int] = {}        # per stream: the last frame id handed out
        self._seen_due = 0.0                    # when the supervisor next hears self._last
        self._end_seen = False
        self._in_with = False
        self._closed = False
        self._finalizer: weakref.finalize | None = None
        self._replies: dict[type[Message], Callable[[Any], None]] = {    # what the supervisor's reports update
            SnapshotMsg: self._on_snapshot, OutcomeMsg: self._on_outcome}

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Pipeline:
        """Start the supervisor and its stages; returns once every stage is ready."""
        if self._proc is not None or self._closed:
            if self._closed:
                raise PipelineError("this pipeline is closed; make a new one")
            return self
        logs = Path(self.config.output.dir) / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"output folder {self.config.output.dir}: cannot create {logs}: "
                              f"{exc.strerror or exc}") from None
        self._run_dir = RunDir()
        self._zmq = zmq.Context()
        results = self._run_dir.endpoint("api-results")
        control = self._run_dir.endpoint("api-control")
        self._results = make_socket(self._zmq, zmq.PULL, bind=results, hwm=1000)
        self._control = make_socket(self._zmq, zmq.DEALER, bind=control, hwm=10_000)
        if self.view:
            self.view_endpoint = self._run_dir.endpoint("api-view")
        spec_path = self._run_dir.path / "pipeline.json"
        spec_path.write_text(json.dumps({"config": self.config.to_dict(), "results": results, "control": control,
                                         "owner_pid": os.getpid(), "max_streams": self.max_streams,
                                         "log_level": stage_level(), "persistent": self.persistent,
                                         "view": self.view_endpoint}),
                             encoding="utf-8")
        try:
            with open(logs / "supervisor.log", "ab") as log_file:
                self._proc = subprocess.Popen([sys.executable, "-m", "engine.api.service", str(spec_path)],
                                              stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        except OSError:
            self._closed = True
            for sock in (self._results, self._control):
                sock.close(0)
            self._zmq.term()
            self._run_dir.remove()
            raise
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, self._zmq,
                                           (self._results, self._control), self._run_dir)
        try:
            started = self._wait_for(StartedMsg)
        except BaseException:
            self.close()
            raise
        if started is None:                    # it ended before it started: a pre-flight error
            outcome = self.outcome or {}
            self.close()
            cls = getattr(errors, str(outcome.get("error", "")), None)
            if not (isinstance(cls, type) and issubclass(cls, OvstreamError)):
                cls = ConfigError if outcome.get("usage") else PipelineError
            raise cls(outcome.get("message") or "the pipeline could not start")
        self.streams = list(started.streams)
        return self

    def close(self) -> None:
        """Stop every process of the run (results not read yet are dropped); waits for the
        supervisor's outcome. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._proc is None:
            return
        if self._proc.poll() is None and self.outcome is None:
            self._command(StopRunMsg())
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.outcome is None and self._proc.poll() is None and time.monotonic() < deadline:
                self._read_control(POLL_MS)
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Pipeline:
        self._in_with = True
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._in_with = False
        self.close()

    # ---- results ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[FrameResult]:
        owned = self._proc is None and not self._in_with     # `for r in Pipeline(...)`: the loop owns it
        self.start()
        try:
            while (result := self.next_result()) is not None:
                yield result
        finally:
            if owned:
                self.close()

    def next_result(self, timeout: float | None = None) -> FrameResult | None:
        """The next result of any stream; None when the run is over (or after ``timeout``
        seconds without one, when a timeout is given)."""
        self.start()
        proc = self._proc
        assert proc is not None                # start() has launched the supervisor (or raised)
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self._results, zmq.POLLIN)
        poller.register(self._control, zmq.POLLIN)
        while not self._closed:
            if self._results.poll(0):
                result = self._take(self._results.recv())
                if result is not None:
                    return result
                continue
            if self.outcome is not None and (self._end_seen or not self._results.poll(0)):
                self._raise_failure()
                return None
            wait = POLL_MS if deadline is None else max(0, min(POLL_MS, int((deadline - time.monotonic()) * 1000)))
            events = dict(poller.poll(wait))
            if self._control in events:
                self._read_control(0)
            if not events and proc.poll() is not None and self.outcome is None:
                self._read_control(0)
                if self.outcome is None:
                    self.outcome = {"exit_code": proc.returncode, "report": {},
                                    "message": f"the supervisor exited with code {proc.returncode} "
                                               f"(see {Path(self.config.output.dir) / 'logs' / 'supervisor.log'})"}
            if deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    def _take(self, data: bytes) -> FrameResult | None:
        """A record from the postprocessor; the end marker tells the supervisor it may stop."""
        try:
            msg = decode(data)
            if not isinstance(msg, RecordMsg):
                raise MessageError(f"expected a record, got {msg.TYPE}")
            if msg.end:
                self._end_seen = True
                self._command(DrainedMsg(int(msg.record.get("streams", 0))))
                return None
            result = FrameResult.from_dict(msg.record)
        except (MessageError, ValueError) as exc:
            log.warning("rejected result message: %s", exc)
            return None
        if result.frame_id <= self._last.get(result.stream, -1):
            return None                 # a record sent again by a restarted postprocessor
        self._last[result.stream] = result.frame_id
        if time.monotonic() >= self._seen_due:          # where a restarted postprocessor resends from
            self._seen_due = time.monotonic() + SEEN_INTERVAL_S
            self._command(SeenMsg({name: last + 1 for name, last in self._last.items()}))
        return result

    def _raise_failure(self) -> None:
        outcome = self.outcome or {}
        report = outcome.get("report") or {}
        if report.get("failure") or not report:
            raise PipelineError(outcome.get("message") or "the pipeline stopped")
        if outcome.get("exit_code") == errors.EXIT_INTERRUPTED:
            raise PipelineError(outcome.get("message") or "interrupted")

    # ---- control ------------------------------------------------------------------------------
    def stats(self) -> Snapshot | None:
        """The latest snapshot of the run (what the dashboard draws; every 0.5 s), or the final
        one (report.json's figures) once it is over; None before the first."""
        if self._proc is not None and not self._closed:
            self._read_control(0)
        report = (self.outcome or {}).get("report")
        if report:
            return Snapshot.from_dict(report)
        return self._snapshot

    def add_source(self, uri: str | os.PathLike, name: str = "", **keys: Any) -> str:
        """Open another stream in the running pipeline: a folder, file, camera index or URL, with
        the keys of a ``[[sources]]`` entry (``loop``, ``live``, ``max_fps``, ``realtime``, ...;
        those not given come from the config's ``[source]``). Returns its name (``name``, else
        one made from the uri; a name stays with its stream for the pipeline's life). Its results
        come in the same iteration, in its frame order. Raises :class:`ConfigError` if the entry
        is wrong, the file is missing, or ``max_streams`` streams are open."""
        entry = {"uri": str(uri), **({"name": name} if name else {}), **keys}
        self._requests += 1
        reply = self._request(AddSourceMsg(self._requests, entry))
        self.streams.append(reply.name)
        return reply.name

    def remove_source(self, name: str) -> None:
        """Stop reading stream ``name``: the frames it has read still come out (in order), then it
        ends; its figures in :meth:`stats` are final from then on. Raises :class:`ConfigError` if
        no open stream has that name."""
        if not isinstance(name, str):          # no stream has a name that is not a string
            raise ConfigError(f"no open stream named '{name}'")
        self._requests += 1
        self._request(RemoveSourceMsg(self._requests, name))

    def _request(self, request: AddSourceMsg | RemoveSourceMsg) -> RequestDoneMsg:
        """Send ``request`` and wait for its answer: done, or refused (a ConfigError)."""
        if not self.running:
            self.start()
            if not self.running:
                raise PipelineError("the pipeline is not running")
        proc = self._proc
        assert proc is not None                # running: the supervisor has been launched
        self._command(request)
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while self.outcome is None and time.monotonic() < deadline:
            for msg in self._read_control(POLL_MS):
                if isinstance(msg, RequestRefusedMsg) and msg.request == request.request:
                    raise ConfigError(msg.error)
                if isinstance(msg, RequestDoneMsg) and msg.request == request.request:
                    return msg
            if proc.poll() is not None:
                break
        raise PipelineError(f"{request.TYPE}: the pipeline " + ("has ended" if self.outcome is not None or
                                                                proc.poll() is not None else "did not answer"))

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._closed and self.outcome is None

    def _command(self, msg: Message) -> None:
        try:
            self._control.send(msg.encode(), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass                        # the supervisor is gone; its outcome (or exit) says why

    def _read_control(self, timeout_ms: int) -> list[Message]:
        """Take the supervisor's messages (:data:`~engine.protocol.apilink.API_REPLIES`): snapshots
        and the outcome update the pipeline here; every one is returned, answers included."""
        out: list[Message] = []
        if not self._control.poll(timeout_ms):
            return out
        for msg in api_messages(self._control, "the pipeline's supervisor", API_REPLIES):
            handler = self._replies.get(type(msg))
            if handler is not None:
                handler(msg)
            out.append(msg)
        return out

    def _on_snapshot(self, msg: SnapshotMsg) -> None:
        self._snapshot = Snapshot.from_dict(msg.snapshot)

    def _on_outcome(self, msg: OutcomeMsg) -> None:
        self.outcome = msg.to_dict()

    def _wait_for(self, kind: type[M]) -> M | None:
        """The supervisor's ``kind`` message, or None once it has sent its outcome (or died)."""
        proc = self._proc
        assert proc is not None                # called by start() once it has launched the supervisor
        while self.outcome is None:
            for msg in self._read_control(POLL_MS):
                if isinstance(msg, kind):
                    return msg
            if proc.poll() is not None:
                self._read_control(0)
                if self.outcome is None:
                    self.outcome = {"exit_code": proc.returncode, "report": {},
                                    "message": f"the supervisor exited with code {proc.returncode} "
                                               f"before it started (see {Path(self.config.output.dir) / 'logs'})"}
        return None


def _shutdown(proc: subprocess.Popen, context: zmq.Context, sockets: tuple, run_dir: RunDir) -> None:
    """Make sure the supervisor is gone (SIGTERM: it stops its stages and cleans up within about a
    second; SIGKILL if it does not), then close the sockets and remove the run directory. Also
    the finalizer of a pipeline that was never closed (garbage collection, interpreter exit)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for sock in sockets:
        sock.close(0)
    context.term()
    run_dir.remove()
