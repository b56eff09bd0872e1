"""The thread that owns a service's :class:`~engine.api.pipeline.Pipeline` (a pipeline is used from one thread).

It starts the pipeline, then reads its results and snapshots in a loop; the HTTP handlers hand it
calls (:meth:`EngineThread.call`: add or remove a stream) and read what it keeps: the latest
snapshot and each stream's latest result. A call waits at most one turn of the loop (50 ms) plus
its own time. Once the run is over (it failed beyond its restarts), calls raise
:class:`~engine.core.errors.PipelineError` and :attr:`EngineThread.error` says why.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from engine.api.pipeline import Pipeline
from engine.core.errors import OvstreamError, PipelineError
from engine.core.results import FrameResult
from engine.observe.metrics import Snapshot

log = logging.getLogger(__name__)

TURN_S = 0.05
RESULTS_PER_TURN = 500      # then calls and the snapshot get their turn


class EngineThread:
    """Runs ``pipeline`` in its own thread; see the module docstring."""

    def __init__(self, pipeline: Pipeline, on_snapshot: Callable[[Snapshot], None] = lambda s: None) -> None:
        self.pipeline = pipeline
        self.snapshot: Snapshot | None = None
        self.latest: dict[str, FrameResult] = {}     # stream → its latest result
        self.error = ""                              # why the pipeline is not running ("": it is, or not yet)
        self._on_snapshot = on_snapshot
        self._calls: queue.SimpleQueue[tuple[Callable[[Pipeline], Any], Future]] = queue.SimpleQueue()
        self._started = threading.Event()
        self._stop = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ovstream-engine", daemon=True)

    def start(self) -> None:
        """Start the pipeline; returns once every stage is ready (raises its one-line error if not)."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    @property
    def running(self) -> bool:
        return self._started.is_set() and not self.error and self._thread.is_alive()

    def call(self, fn: Callable[[Pipeline], Any]) -> Future:
        """``fn(pipeline)`` in the engine's thread; its result or exception in the future."""
        future: Future = Future()
        if not self.running:
            future.set_exception(PipelineError(self.error or "the pipeline is not running"))
        else:
            self._calls.put((fn, future))
        return future

    def stop(self) -> None:
        """Stop the pipeline (streams drain, processes end) and the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        pipe = self.pipeline
        try:
            pipe.start()
        except BaseException as exc:        # a pre-flight error: start() raises it in the caller
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stop.is_set() and not self.error:
                self._turn(pipe)
        except OvstreamError as exc:
            self.error = str(exc)
            log.error("the pipeline stopped: %s", exc)
        except Exception as exc:  # noqa: BLE001 - a bug: one line for the service, the trace in the debug log
            self.error = f"internal error: {type(exc).__name__}: {exc}"
            log.error("the pipeline stopped: %s", self.error)
            log.debug("the pipeline stopped", exc_info=True)
        finally:
            self.error = self.error or "the service is stopping"
            self._refuse_calls()
            pipe.close()
            self._publish(pipe)

    def _turn(self, pipe: Pipeline) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(pipe))
                except BaseException as exc:  # handed to the caller, whatever it is
                    future.set_exception(exc)
        result = pipe.next_result(TURN_S)
        for _ in range(RESULTS_PER_TURN):
            if result is None:
                break
            self.latest[result.stream] = result
            result = pipe.next_result(0)
        self._publish(pipe)
        if not pipe.running:
            self.error = (pipe.outcome or {}).get("message") or "the pipeline has ended"

    def _publish(self, pipe: Pipeline) -> None:
        snapshot = pipe.stats()
        if snapshot is not None and snapshot is not self.snapshot:
            self.snapshot = snapshot
            self._on_snapshot(snapshot)

    def _refuse_calls(self) -> None:
        while True:
            try:
                _, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(PipelineError(self.error))
