"""The stage runtime's CPU split between its own threads and a native library's."""
from __future__ import annotations

import threading
import time

import numpy as np

from engine.model.runtime import ov
from tests.conftest import REPO
from workers.runtime import own_threads_cpu_s

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
