"""The two pieces a stage loop sleeps and wakes on: an eventfd in the ZeroMQ poller, and draining
a socket without waiting."""
from __future__ import annotations

import threading

import zmq

from engine.protocol.channels import make_socket, pending
from engine.protocol.wakeup import Wakeup


def test_a_set_from_another_thread_wakes_the_poller_once_until_cleared():
    wake = Wakeup()
    poller = zmq.Poller()
    poller.register(wake.fileno(), zmq.POLLIN)
    assert poller.poll(0) == []
    setters = [threading.Thread(target=wake.set) for _ in range(3)]
    for t in setters:
        t.start()
    for t in setters:
        t.join()
    assert dict(poller.poll(1000)) == {wake.fileno(): zmq.POLLIN}
    wake.clear()
    assert poller.poll(0) == []                  # three sets, one clear: nothing left to wake on
    wake.close()
    wake.set()                                   # after close: ignored, never an error


def test_pending_drains_what_is_there_and_returns_at_once():
    ctx = zmq.Context()
    try:
        rx = make_socket(ctx, zmq.PULL, bind="inproc://drain")
        tx = make_socket(ctx, zmq.PUSH, connect="inproc://drain")
        assert list(pending(rx)) == []
        for i in range(5):
            tx.send(bytes([i]))
        assert rx.poll(1000)
        assert list(pending(rx)) == [bytes([i]) for i in range(5)]
        tx.send_multipart([b"a", b"b"])
        assert rx.poll(1000)
        assert list(pending(rx, multipart=True)) == [[b"a", b"b"]]
        rx.close(0)
        tx.close(0)
    finally:
        ctx.term()
