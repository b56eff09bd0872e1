"""Many streams in one run: real processes, real sources served on 127.0.0.1.

Every file frame of every stream exactly once and in its stream's order; cameras' frames arrive;
a dead camera, a SIGKILLed decoder or an RTSP server restart stays inside its stream.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from engine.control.launch import stage_of
from tests.conftest import COCO, REPO, ovstream_command, run_ovstream
from tests.pipeline.test_run import FACE_IMAGE, _MjpegHandler, write_config

RTSP_HELPER = REPO / "tests" / "helpers" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def write_video(path: Path, frames: int) -> Path:
    image = cv2.imread(str(COCO / FACE_IMAGE))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (image.shape[1], image.shape[0]))
    for i in range(frames):
        writer.write(np.roll(image, i * 4, axis=1))
    writer.release()
    return path


def image_folder(path: Path, count: int) -> Path:
    path.mkdir()
    for name in sorted(os.listdir(COCO))[:count]:
        shutil.copy(COCO / name, path / name)
    return path


def serve_camera(frames: int, connections: int = 1) -> http.server.ThreadingHTTPServer:
    """An HTTP MJPEG "camera" on 127.0.0.1: ``frames`` per connection, then 503 (gone)."""
    jpeg = cv2.imencode(".jpg", cv2.imread(str(COCO / FACE_IMAGE)))[1].tobytes()
    handler = type("Camera", (_MjpegHandler,), {"frames": [jpeg] * frames, "connections_left": connections})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_port}/stream.mjpg"


def by_stream(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        out[r["stream"]].append(r)
    return out


def assert_exactly_once_in_order(records: list[dict], expected: int) -> None:
    assert [r["frame_id"] for r in records] == list(range(expected))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_four_streams_two_workers_each_stream_exactly_once_in_order(engine_env, tmp_path):
    long_clip, short_clip = write_video(tmp_path / "long.avi", 40), write_video(tmp_path / "short.avi", 15)
    folder = image_folder(tmp_path / "pictures", 12)
    camera = serve_camera(frames=40)
    try:
        config = write_config(tmp_path / "four.toml", f"""
[[sources]]
uri = "{long_clip}"
[[sources]]
uri = "{short_clip}"
[[sources]]
uri = "{folder}"
[[sources]]
uri = "{url(camera)}"
name = "door"
reconnect_attempts = 0
""")
        result = run_ovstream(str(config), "--model", "face", "--device", "CPU", "--device", "CPU", "--nireq", "2",
                              output=tmp_path / "out", env=engine_env)
    finally:
        camera.shutdown()
    streams = by_stream(result.records)
    assert set(streams) == {"long", "short", "pictures", "door"}, result.stderr
    assert_exactly_once_in_order(streams["long"], 40)
    assert_exactly_once_in_order(streams["short"], 15)
    assert_exactly_once_in_order(streams["pictures"], 12)
    assert [r["frame_index"] for r in streams["long"]] == list(range(40))
    assert [Path(r["source"]).parent for r in streams["pictures"]] == [folder] * 12
    door = [r for r in streams["door"] if r["status"] == "ok"]
    assert len(door) >= 5 and all(r["detections"] for r in door)        # the camera's frames arrived
    ids = [r["frame_id"] for r in streams["door"]]
    assert ids == sorted(set(ids))                                       # a live stream in order too
    mixed = defaultdict(set)
    for r in result.records:
        if r["status"] == "ok":
            mixed[r["worker"]].add(r["stream"])
    assert set(mixed) == {"inference-0", "inference-1"}
    assert all(len(streams_seen) >= 2 for streams_seen in mixed.values()), mixed
    report = result.report
    for name, expected in (("long", 40), ("short", 15), ("pictures", 12)):
        row = report["streams"][name]
        assert (row["kind"], row["state"], row["in"], row["out"], row["in_flight"]) == \
            ("file", "ended", expected, expected, 0)
    door_row = report["streams"]["door"]
    assert door_row["kind"] == "live" and door_row["in"] == door_row["out"] + door_row["errors"] + door_row["drops"]
    assert door_row["latency_ms"]["end_to_end"]["p50"] > 0
    acc = report["accounting"]
    assert acc["in"] == sum(r["in"] for r in report["streams"].values()) and acc["in_flight"] == 0
    assert "[ovstream]   long" in result.stdout or "[ovstream]   short" in result.stdout   # per-stream lines


def test_a_dead_camera_fails_alone_and_the_other_cameras_go_on(engine_env, tmp_path):
    cameras = [serve_camera(frames=40), serve_camera(frames=40)]
    dead = f"http://127.0.0.1:{free_port()}/stream.mjpg"            # nothing listens there
    try:
        config = write_config(tmp_path / "cams.toml", "".join(
            f'[[sources]]\nuri = "{u}"\nname = "{n}"\nreconnect_attempts = 0\n'
            for n, u in (("east", url(cameras[0])), ("dead", dead), ("west", url(cameras[1])))))
        result = run_ovstream(str(config), "--model", "face", output=tmp_path / "out", env=engine_env)
    finally:
        for camera in cameras:
            camera.shutdown()
    assert result.code == 1, result.stderr                   # finished, with the dead camera's error record
    streams = by_stream(result.records)
    assert [r["status"] for r in streams["dead"]] == ["error"] and "cannot open" in streams["dead"][0]["error"]
    for name in ("east", "west"):
        assert sum(r["status"] == "ok" for r in streams[name]) >= 10, (name, result.stderr)
    states = {name: row["state"] for name, row in result.report["streams"].items()}
    assert states["dead"] == "failed"


def test_duration_ends_a_run_of_live_streams_with_exit_0(engine_env, tmp_path):
    camera = serve_camera(frames=2000)                   # ~40 s of frames: longer than the run
    try:
        result = run_ovstream("--source", url(camera), "--model", "face", "--duration", "3",
                              output=tmp_path / "out", env=engine_env, timeout=60)
    finally:
        camera.shutdown()
    assert result.code == 0, result.stderr
    report = result.report
    (name, row), = report["streams"].items()
    assert report["state"] == "finished" and row["state"] == "live" and row["out"] >= 5
    assert row["in"] == row["out"] + row["errors"] + row["drops"] + row["in_flight"]
    assert len(result.records) == row["out"] + row["errors"]


def _start(args: list[str], out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(ovstream_command("run", *args, "--output", str(out), "--no-dashboard"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def _records(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def test_sigkill_of_one_decoder_restarts_it_alone_and_every_stream_is_exactly_once(engine_env, tmp_path):
    clip_a, clip_b = write_video(tmp_path / "a.avi", 50), write_video(tmp_path / "b.avi", 30)
    folder = image_folder(tmp_path / "pictures", 20)
    out = tmp_path / "out"
    proc = _start(["--source", str(clip_a), "--source", str(clip_b), "--source", str(folder), "--loop", "2",
                   "--decoders", "2", "--model", "face"], out, engine_env)
    _wait(lambda: len(_records(out)) >= 40, proc, "40 results")
    decoders = [c for c in psutil.Process(proc.pid).children() if stage_of(c.cmdline()) == "decoder-0"]
    decoders[0].kill()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "decoder-0 exited with code -9; restarting" in stderr
    streams = by_stream(_records(out))
    assert_exactly_once_in_order(streams["a"], 100)
    assert_exactly_once_in_order(streams["b"], 60)
    assert_exactly_once_in_order(streams["pictures"], 40)
    report = json.loads((out / "report.json").read_text())
    assert {name: n for name, n in report["restarts"].items() if n} == {"decoder-0": 1}   # nothing else restarted
    assert report["accounting"]["balanced"] and all(r["in_flight"] == 0 for r in report["streams"].values())


# ---- a real RTSP server ------------------------------------------------------------------------

def _rtsp_server_available() -> str:
    """Why the GStreamer RTSP server cannot run here ("" when it can)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else "python3-gi / gir1.2-gst-rtsp-server-1.0 not installed (see .ci/run)"


class RtspServer:
    """gst-rtsp-server in a child process (the system Python), restartable on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_HELPER), str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env={"PATH": "/usr/bin:/bin"})
        assert self.proc.stdout.readline().strip() == "READY"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def rtsp_server():
    why = _rtsp_server_available()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"RTSP server missing in CI: {why}")
        pytest.skip(why)
    server = RtspServer(free_port())
    server.start()
    yield server
    server.stop()


def test_rtsp_camera_reconnects_after_a_server_restart_and_the_other_stream_is_unaffected(
        engine_env, tmp_path, rtsp_server):
    clip = write_video(tmp_path / "clip.avi", 30)
    config = write_config(tmp_path / "rtsp.toml", f"""
[[sources]]
uri = "{rtsp_server.url}"
name = "gate"
reconnect_attempts = 10
[[sources]]
uri = "{clip}"
realtime = true
loop = 4
""")
    out = tmp_path / "out"
    proc = _start([str(config), "--model", "face", "--duration", "30"], out, engine_env)

    def gate_frames() -> int:
        return sum(r["stream"] == "gate" and r["status"] == "ok" for r in _records(out))

    _wait(lambda: gate_frames() >= 10, proc, "10 RTSP frames")
    rtsp_server.stop()
    log = out / "logs" / "decoder-0.log"
    _wait(lambda: log.exists() and "reconnect attempt" in log.read_text(), proc, "a reconnect attempt", 30)
    before = gate_frames()
    rtsp_server.start()
    _wait(lambda: gate_frames() >= before + 10, proc, "RTSP frames after the restart", 60)
    proc.send_signal(2)                                    # Ctrl-C: the live stream would go on
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    streams = by_stream(_records(out))
    clip_ids = [r["frame_id"] for r in streams["clip"]]
    assert clip_ids == list(range(len(clip_ids))) and len(clip_ids) >= 30   # paced at 25 FPS, never disturbed
    assert all(r["status"] == "ok" for r in streams["clip"])
    gate_ids = [r["frame_id"] for r in streams["gate"]]
    assert gate_ids == sorted(set(gate_ids)) and all(r["status"] == "ok" for r in streams["gate"])
    report = json.loads((out / "report.json").read_text())
    assert report["streams"]["gate"]["reconnects"] >= 1 and report["streams"]["gate"]["kind"] == "live"


def test_sigkill_of_a_cameras_decoder_the_camera_goes_on_numbering_without_a_repeat(engine_env, tmp_path):
    camera = serve_camera(frames=400, connections=2)      # the restarted decoder connects again
    clip = write_video(tmp_path / "clip.avi", 40)
    out = tmp_path / "out"
    try:
        proc = _start(["--source", url(camera), "--source", str(clip), "--loop", "2", "--decoders", "2",
                       "--model", "face", "--duration", "8"], out, engine_env)
        _wait(lambda: sum(r["stream"] == "stream" for r in _records(out)) >= 20, proc, "20 camera results")
        owner = [c for c in psutil.Process(proc.pid).children() if stage_of(c.cmdline()) == "decoder-0"]
        owner[0].kill()                                    # cameras are dealt out first: decoder-0 has it
        _, stderr = proc.communicate(timeout=60)
    finally:
        camera.shutdown()
    assert proc.returncode == 0, stderr
    streams = by_stream(_records(out))
    assert_exactly_once_in_order(streams["clip"], 80)
    ids = [r["frame_id"] for r in streams["stream"]]
    assert len(ids) > 20 and ids == sorted(set(ids))     # numbering went on after the fence, no id twice
    report = json.loads((out / "report.json").read_text())
    assert {name: n for name, n in report["restarts"].items() if n} == {"decoder-0": 1}
