"""The stage runtime: the loop every stage runs (handlers per socket, commands by type), and the
CPU split between its own threads and a native library's."""
from __future__ import annotations

import os
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from engine.model.runtime import ov
from engine.protocol.messages import ReadyMsg, StopMsg, WorkerDownMsg, decode
from tests.conftest import REPO
from workers.runtime import Stage, StageLoop, own_threads_cpu_s

MNIST = REPO / "models" / "mnist" / "mnist.xml"


def _busy_for(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_python_threads_count_as_own():
    before = own_threads_cpu_s()
    worker = threading.Thread(target=_busy_for, args=(0.3,))
    worker.start()
    _busy_for(0.2)
    worker.join()          # an ended thread's CPU is no longer listed: the main thread's 0.2 s stays
    assert own_threads_cpu_s() - before > 0.15


def test_openvino_streams_do_not_count_as_own():
    compiled = ov.Core().compile_model(str(MNIST), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    queue = ov.AsyncInferQueue(compiled, 2)
    pixels = np.zeros(tuple(compiled.input(0).shape), np.float32)
    before, cpu_before = own_threads_cpu_s(), time.process_time()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        queue.start_async({0: pixels})
    queue.wait_all()
    own, total = own_threads_cpu_s() - before, time.process_time() - cpu_before
    assert total - own > 0.05          # the streams' work, outside the feeding loop


class Probe(StageLoop):
    """A stage with two inputs, one command of its own and a record of what ran when."""

    def __init__(self, ctx: SimpleNamespace, stage: Stage) -> None:
        super().__init__(ctx, stage)
        self.seen: list[tuple] = []
        self.inputs = {name: self.socket(zmq.PULL, bind=f"inproc://{ctx.name}-{name}") for name in ("a", "b")}
        for name, sock in self.inputs.items():
            self.watch(sock, lambda name=name, sock=sock: self.seen.append((name, sock.recv())))
        self.on_command(WorkerDownMsg, lambda msg: self.seen.append(("worker_down", msg.worker)))

    def after_poll(self) -> None:
        self.seen.append(("turn",))
        if self.ctx.fail:
            raise RuntimeError("a bug in a turn")


@pytest.fixture
def control():
    """The supervisor's end of the control channel, and a context for a stage that talks to it."""
    name = f"probe-{uuid.uuid4().hex[:8]}"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(f"inproc://{name}-control")
    ctx = SimpleNamespace(name=name, role="probe", device="", generation=0, supervisor_pid=os.getppid(), fail=False,
                          endpoints={"control": f"inproc://{name}-control"},
                          config=SimpleNamespace(pipeline=SimpleNamespace(heartbeat_s=0.05)))
    yield router, ctx
    router.close(0)


def _commands(router: zmq.Socket, ctx: SimpleNamespace, *msgs) -> None:
    """Send ``msgs`` to the stage once its READY has arrived (the router knows it then)."""
    assert router.poll(5000)
    assert isinstance(decode(router.recv_multipart()[1]), ReadyMsg)
    for msg in msgs:
        router.send_multipart([ctx.name.encode(), msg.encode()])


def _push(ctx: SimpleNamespace, name: str, data: bytes) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.connect(f"inproc://{ctx.name}-{name}")
    sock.send(data)
    return sock


def test_a_turn_runs_commands_by_type_then_the_handlers_of_ready_inputs_then_its_own_work(control):
    router, ctx = control
    stage = Stage(ctx)
    loop = Probe(ctx, stage)
    pusher = _push(ctx, "b", b"frame")
    stage.ready()
    _commands(router, ctx, WorkerDownMsg("inference-0@7"), StopMsg())
    time.sleep(0.05)
    try:
        loop.run()
    finally:
        pusher.close(0)
        stage.close()
    assert loop.seen == [("worker_down", "inference-0@7"), ("b", b"frame"), ("turn",)]   # a: nothing came
    assert stage.stopping and all(sock.closed for sock in loop.inputs.values())


def test_a_failing_turn_still_closes_the_stage_sockets(control):
    router, ctx = control
    ctx.fail = True
    stage = Stage(ctx)
    loop = Probe(ctx, stage)
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            loop.run()
    finally:
        stage.close()
    assert all(sock.closed for sock in loop.inputs.values())
