"""The live view without a pipeline: the postprocessor's ViewSink and the server's LiveView over a real ipc socket."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import zmq

from engine.api.live import LiveView, mjpeg_part
from engine.core.results import FrameResult
from engine.io.view import ViewSink, topic
from engine.protocol.channels import make_socket


def _result(stream: str, frame_id: int) -> FrameResult:
    return FrameResult(stream, frame_id, "x.jpg", frame_id, detections=())


def _until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.01)


def test_the_sink_encodes_only_watched_streams_at_most_fps_times_a_second(tmp_path):
    endpoint = f"ipc://{tmp_path}/view"
    server = make_socket(zmq.Context.instance(), zmq.SUB, bind=endpoint)
    sink = ViewSink(endpoint, fps=0.5)        # one frame per 2 s
    frame = np.zeros((48, 64, 3), np.uint8)
    try:
        sink.write(_result("cam", 0), frame)
        assert sink.counters() == {"view_published": 0, "view_dropped": 0}      # nobody watches
        server.setsockopt(zmq.SUBSCRIBE, topic("cam"))          # (a socket's connections are attached, and
        _until(lambda: (server.poll(0), sink.poll(), sink.gauges()["view_watched"] == 1)[2])   # its
        # subscriptions sent, while its owner uses it: the server's thread polls it all the time)
        sink.write(_result("cam-2", 0), frame)            # a name that only starts like it: not watched
        sink.write(_result("cam", 1), frame)
        sink.write(_result("cam", 2), frame)              # within the interval: skipped
        assert sink.counters()["view_published"] == 1
        key, jpeg = server.recv_multipart()
        assert key == topic("cam") and jpeg[:2] == b"\xff\xd8"
        server.setsockopt(zmq.UNSUBSCRIBE, topic("cam"))
        _until(lambda: (server.poll(0), sink.poll(), sink.gauges()["view_watched"] == 0)[2])
    finally:
        sink.close()
        server.close(0)


def test_a_viewer_that_does_not_keep_up_gets_the_newest_frame_and_the_rest_are_counted(tmp_path):
    endpoint = f"ipc://{tmp_path}/view"
    live = LiveView(endpoint)
    pub = make_socket(zmq.Context.instance(), zmq.XPUB, connect=endpoint)

    async def watch() -> tuple[bytes, bytes]:
        frames = live.frames("cam")
        first = asyncio.ensure_future(frames.__anext__())      # the viewer arrives: the server subscribes
        deadline = time.monotonic() + 5
        while not pub.poll(10):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert pub.recv() == b"\1" + topic("cam")
        pub.send_multipart((topic("cam"), b"jpeg0"))
        got = await asyncio.wait_for(first, 5)
        for i in range(1, 5):                                   # while the viewer takes none
            pub.send_multipart((topic("cam"), b"jpeg%d" % i))
        while live.figures["cam"].frames < 5:                   # every frame reached the viewer's slot
            await asyncio.sleep(0.01)
        newest = await asyncio.wait_for(frames.__anext__(), 5)
        await frames.aclose()
        return got, newest

    try:
        got, newest = asyncio.run(watch())
        assert got == b"jpeg0" and newest == b"jpeg4"
        figures = live.figures["cam"]
        assert figures.frames == 5 and figures.dropped == 3 and figures.viewers == 0
        _until(lambda: pub.poll(10) and pub.recv() == b"\0" + topic("cam"))   # the last viewer left
    finally:
        live.close()
        pub.close(0)
    assert mjpeg_part(b"J").startswith(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 1\r\n\r\nJ")
