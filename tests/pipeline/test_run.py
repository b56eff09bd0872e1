"""End to end: `ovstream run` with the real stage processes, as a user runs it."""
from __future__ import annotations

import http.server
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from tests.conftest import COCO, FACE_ON_COCO, REPO, ovstream_command, run_ovstream

FACE_IMAGE = "000000009378.jpg"          # one face near [355, 81, 426, 152] (checked by eye)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_default_run_finds_the_sample_objects_in_photos_and_video(engine_env, tmp_path):
    """`ovstream run` with no arguments: the bundled photos and clip, two streams, through SSD MobileNet v2."""
    result = run_ovstream(output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    photos = [r for r in result.records if r["stream"] == "samples"]
    clip = [r for r in result.records if r["stream"] == "clip"]
    assert [r["frame_id"] for r in photos] == list(range(6)) and [r["frame_id"] for r in clip] == list(range(360))
    assert all(r["status"] == "ok" for r in photos + clip)
    found = {Path(r["source"]).stem: {d["label"] for d in r["detections"]} for r in photos}
    assert {"person"} <= found["astronaut"] and {"cat"} <= found["chelsea"] and {"cup"} <= found["coffee"]
    assert {"motorcycle"} <= found["motorcycle_left"] and {"person"} <= found["camera"]
    in_clip = Counter(d["label"] for r in clip for d in r["detections"])
    assert all(in_clip[label] >= 30 for label in ("person", "cat", "cup", "motorcycle")), in_clip
    assert result.report["accounting"]["balanced"]


def test_the_codelab_coco_images_through_the_default_detector(engine_env, tmp_path):
    """The codelab's 100 COCO val2017 images through SSD MobileNet v2 COCO: the objects where they are."""
    result = run_ovstream("--source", str(COCO), output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    records = result.records
    assert [r["frame_id"] for r in records] == list(range(100))
    assert all(r["status"] == "ok" for r in records)
    by_name = {Path(r["source"]).name: r for r in records}

    def best(image: str, label: str) -> dict:
        found = [d for d in by_name[image]["detections"] if d["label"] == label]
        assert found, f"{image}: no {label} in {by_name[image]['detections']}"
        return max(found, key=lambda d: d["score"])

    bear = best("000000000285.jpg", "bear")            # the bear fills most of the 640x586 picture
    assert bear["class_id"] == 23 and bear["box"][2] - bear["box"][0] > 400
    stop = best("000000000724.jpg", "stop sign")       # COCO id 13, near [123, 72, 257, 226]
    assert stop["class_id"] == 13
    x1, y1, x2, y2 = stop["box"]
    assert abs((x1 + x2) / 2 - 190) < 20 and abs((y1 + y2) / 2 - 149) < 20
    best("000000000139.jpg", "tv")
    labels = Counter(d["label"] for r in records for d in r["detections"])
    assert labels["person"] >= 100 and "???" not in labels, labels
    assert result.report["accounting"]["balanced"]


def test_face_detector_on_the_coco_folder(engine_env, tmp_path):
    result = run_ovstream("--model", "face", "--source", str(COCO), output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    records = result.records
    assert [r["frame_id"] for r in records] == list(range(100))
    assert all(r["status"] == "ok" for r in records)
    by_name = {Path(r["source"]).name: r for r in records}
    faces = by_name[FACE_IMAGE]["detections"]
    assert len(faces) == 1 and faces[0]["label"] == "face"
    x1, y1, x2, y2 = faces[0]["box"]
    assert abs((x1 + x2) / 2 - 390) < 12 and abs((y1 + y2) / 2 - 116) < 12
    assert sum(len(r["detections"]) for r in records) >= 40     # the shared README counts 52
    report = result.report
    assert report["accounting"]["in"] == 100 and report["accounting"]["balanced"]
    assert report["throughput_fps"] > 0
    assert set(report["latency_ms"]) >= {"decode", "preprocess", "inference", "end_to_end"}
    progress = [line for line in result.stdout.splitlines() if line.startswith("[ovstream] ")]
    assert len(progress) >= 2 and "frames 100/100 ok 100" in progress[-1], result.stdout   # --no-dashboard


def test_video_file_results_in_frame_order(engine_env, tmp_path):
    frame = cv2.imread(str(COCO / FACE_IMAGE))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (frame.shape[1], frame.shape[0]))
    for i in range(40):
        writer.write(np.roll(frame, i * 4, axis=1))
    writer.release()
    result = run_ovstream("--model", "face", "--source", str(video), "--batch", "2", output=tmp_path / "out",
                          env=engine_env)
    assert result.code == 0, result.stderr
    records = result.records
    assert [r["frame_index"] for r in records] == list(range(40))
    assert sum(1 for r in records if r["detections"]) >= 36


class _MjpegHandler(http.server.BaseHTTPRequestHandler):
    frames: list[bytes] = []
    connections_left = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).connections_left -= 1
        if self.connections_left < 0:
            self.send_error(503)            # the camera is gone for good
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for jpeg in self.frames:
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                             + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
            time.sleep(0.02)

    def log_message(self, *args: object) -> None:
        pass


def run_camera(tmp_path: Path, env: dict, frames: int, connections: int, reconnect_attempts: int):
    """`ovstream run` on an HTTP MJPEG "camera" served on 127.0.0.1: ``frames`` per connection,
    ``connections`` connections accepted, then 503 (the camera is gone)."""
    jpeg = cv2.imencode(".jpg", cv2.imread(str(COCO / FACE_IMAGE)))[1].tobytes()
    _MjpegHandler.frames, _MjpegHandler.connections_left = [jpeg] * frames, connections
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MjpegHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = write_config(tmp_path / "cam.toml", f"""
[source]
uri = "http://127.0.0.1:{server.server_port}/stream.mjpg"
reconnect_attempts = {reconnect_attempts}
[model]
name = "face"
""")
        return run_ovstream(str(config), output=tmp_path / "out", env=env)
    finally:
        server.shutdown()


def test_http_mjpeg_stream_as_camera(engine_env, tmp_path):
    result = run_camera(tmp_path, engine_env, frames=30, connections=1, reconnect_attempts=0)
    records = [r for r in result.records if r["status"] == "ok"]
    assert len(records) >= 10, result.stderr
    assert all(r["detections"] for r in records)
    acc = result.report["accounting"]
    assert acc["in"] == acc["out"] + acc["errors"] + acc["drops"]


def test_camera_that_drops_is_reconnected_and_reported(engine_env, tmp_path):
    result = run_camera(tmp_path, engine_env, frames=10, connections=2, reconnect_attempts=2)
    ok = [r for r in result.records if r["status"] == "ok"]
    assert len(ok) > 10, "frames from after the reconnect arrived"
    assert result.report["accounting"]["reconnects"] >= 1
    assert "reconnect" in (tmp_path / "out" / "logs" / "decoder-0.log").read_text()


def test_two_cpu_workers_share_the_work(engine_env, tmp_path):
    result = run_ovstream(*FACE_ON_COCO, "--device", "CPU", "--device", "CPU", "--nireq", "2", output=tmp_path / "out",
                          env=engine_env)
    assert result.code == 0, result.stderr
    per_worker = Counter(r["worker"] for r in result.records)
    assert set(per_worker) == {"inference-0", "inference-1"}
    assert min(per_worker.values()) >= 10, per_worker
    assert sorted(r["frame_id"] for r in result.records) == list(range(100))


def test_bad_files_become_error_records_and_the_stream_goes_on(engine_env, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("000000009378.jpg", "000000001296.jpg"):
        (folder / name).write_bytes((COCO / name).read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "truncated.jpg").write_bytes((COCO / "000000000139.jpg").read_bytes()[:5000])
    result = run_ovstream("--model", "face", "--source", str(folder), output=tmp_path / "out", env=engine_env)
    assert result.code == 1                      # finished, with failed frames
    records = {Path(r["source"]).name: r for r in result.records}
    assert len(records) == 5
    for bad in ("empty.jpg", "notes.jpg", "truncated.jpg"):
        assert records[bad]["status"] == "error" and records[bad]["error"]
    assert records["000000009378.jpg"]["status"] == "ok" and records["000000009378.jpg"]["detections"]
    assert result.report["accounting"]["errors"] == 3


@pytest.mark.parametrize("args, expected", [
    (["--device", "NOPE"], "device 'NOPE' is not available (OpenVINO lists: CPU"),
    (["--model", "missing.xml"], "model file not found"),
    (["--model", "no_such_model"], "is not in"),
    (["--source", "no/such/folder"], "no such file or folder"),
])
def test_user_mistakes_exit_2_with_one_line(engine_env, tmp_path, args, expected):
    result = run_ovstream(*args, output=tmp_path / "out", env=engine_env, timeout=60)
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_exits_2(engine_env, tmp_path):
    config = write_config(tmp_path / "bad.toml", "[inference]\nnreq = 4\n")
    result = run_ovstream(str(config), output=tmp_path / "out", env=engine_env, timeout=60)
    assert result.code == 2
    assert "unknown key 'nreq' (did you mean 'nireq'?)" in result.stderr


def _stage_pids(parent: psutil.Process, role: str) -> list[int]:
    return [c.pid for c in parent.children(recursive=True) if f"workers.{role}" in " ".join(c.cmdline())]


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text(encoding="utf-8").count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines")


def test_killed_inference_worker_is_restarted_and_no_frame_is_lost(engine_env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(ovstream_command("run", *FACE_ON_COCO, "--loop", "4", "--device", "CPU", "--device", "CPU",
                                             "--output", str(out), "--no-dashboard"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env)
    _wait_for_lines(out / "results.jsonl", 60, proc)
    victim = _stage_pids(psutil.Process(proc.pid), "inference")[0]
    psutil.Process(victim).kill()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    ids = [json.loads(line)["frame_id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == list(range(400)) and ids == sorted(ids)      # all, once each, in order
    report = json.loads((out / "report.json").read_text())
    assert sum(report["restarts"].values()) == 1
    assert report["accounting"]["balanced"]


def test_sigint_stops_everything_promptly(engine_env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(ovstream_command("run", *FACE_ON_COCO, "--loop", "50", "--output", str(out),
                                             "--no-dashboard"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env)
    _wait_for_lines(out / "results.jsonl", 20, proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=15)
    assert time.monotonic() - started < 3.0
    assert proc.returncode == 130
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_annotated_images_and_video_sinks(engine_env, tmp_path):
    frame = cv2.imread(str(COCO / FACE_IMAGE))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (frame.shape[1], frame.shape[0]))
    for _ in range(12):
        writer.write(frame)
    writer.release()
    result = run_ovstream("--model", "face", "--source", str(video), "--annotate", "--video", "--nireq", "4",
                          output=tmp_path / "out",
                          env=engine_env)
    assert result.code == 0, result.stderr
    images = sorted((tmp_path / "out" / "images" / "clip").glob("*.jpg"))
    assert len(images) == 12
    annotated = cv2.imread(str(images[0]))
    assert annotated.shape == frame.shape
    x1, y1, x2, y2 = (int(v) for v in result.records[0]["detections"][0]["box"])
    assert np.abs(annotated[y1, x1:x2].astype(int) - frame[y1, x1:x2]).mean() > 20     # the box is drawn
    written = sorted((tmp_path / "out" / "video").iterdir())
    capture = cv2.VideoCapture(str(written[0]))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12


def test_yolo_model_configured_in_a_config_file(engine_env, tmp_path):
    """A YOLOv8-layout graph through the whole engine, set up as a user would in TOML."""
    from tests.unit.test_anchor_free import yolo_graph

    model = yolo_graph(tmp_path / "yolo.xml", "v8")
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "wide.png"), np.zeros((64, 128, 3), np.uint8))
    config = write_config(tmp_path / "yolo.toml", f"""
[source]
uri = "{folder}"
[model]
name = "tiny_yolo"
path = "{model}"
adapter = "yolo"
labels = ["a", "b", "c"]
[model.preprocess]
resize = "letterbox"
scale = [255.0, 255.0, 255.0]
[model.params]
version = "v8"
nms_iou = 0.45
""")
    result = run_ovstream(str(config), output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    (record,) = result.records
    assert [(d["label"], round(d["score"], 2)) for d in record["detections"]] == [("b", 0.9), ("c", 0.7)]
    assert record["detections"][0]["box"] == pytest.approx([44, 22, 84, 42], abs=0.01)
