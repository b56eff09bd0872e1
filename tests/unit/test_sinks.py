"""Result sinks: JSON lines with crash recovery, drawing, annotated images and video."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.config import OutputConfig
from engine.core.results import Classification, Detection, FrameResult
from engine.io.sinks import ImageSink, JsonlSink, PerStream, VideoSink, draw, open_sinks


def _record(frame_id: int, **extra) -> FrameResult:
    fields = {"stream": "cam", "frame_id": frame_id, "source": "data/img.jpg", "frame_index": 0, "status": "ok",
              "device": "CPU", "worker": "inference-0", "latency_ms": {"infer": 1.5}}
    fields.update(extra)
    return FrameResult(**fields)


def _detection(box: list[float], class_id: int = 1, label: str = "person",
               keypoints: list[list[float]] | None = None) -> Detection:
    return Detection(label, class_id, 0.87, tuple(box), None if keypoints is None else tuple(map(tuple, keypoints)))


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    sink = JsonlSink(path)
    records = [_record(0, detections=(_detection([1.0, 2.0, 3.0, 4.0]),)),
               _record(1, source="données/日本.png",
                       detections=(Detection("x", 2, np.float32(0.5), tuple(np.arange(4))),)),   # numpy values
               _record(2, status="error", error="truncated JPEG: data/x.jpg", stage="decode")]
    for record in records:
        sink.write(record, None)
    sink.flush()
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3      # flushed: on disk already
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "日本" in lines[1]                                             # UTF-8, not \\u escapes
    back = [json.loads(line) for line in lines]
    assert back[0] == records[0].to_dict() and back[2] == records[2].to_dict()
    assert back[1]["detections"][0]["score"] == 0.5 and back[1]["detections"][0]["box"] == [0, 1, 2, 3]


def test_jsonl_writes_undecodable_names_as_escapes(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    sink = JsonlSink(path)
    name = b"data/caf\xe9.jpg".decode("utf-8", "surrogateescape")   # a Latin-1 file name on Linux
    sink.write(_record(0, source=name), None)
    sink.close()
    assert json.loads(path.read_text(encoding="utf-8"))["source"] == name


def test_jsonl_recover_truncates_partial_line_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    assert JsonlSink.recover(path) == {}
    sink = JsonlSink(path)
    for frame_id in (0, 1, 5):
        sink.write(_record(frame_id), None)
    sink.write(_record(0, stream="door"), None)
    sink.close()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"stream": "cam", "frame_id": 7, "source": "data/im')      # a crash mid-write
    assert JsonlSink.recover(path) == {"cam": ({0, 1, 5}, set()), "door": ({0}, set())}
    assert path.read_bytes().endswith(b"\n") and len(path.read_text().splitlines()) == 4
    sink = JsonlSink(path, append=True)
    sink.write(_record(7, status="error"), None)
    sink.close()
    assert JsonlSink.recover(path) == {"cam": ({0, 1, 5}, {7}), "door": ({0}, set())}
    assert [json.loads(line)["frame_id"] for line in path.read_text().splitlines()] == [0, 1, 5, 0, 7]


def test_jsonl_full_disk_leaves_only_whole_records(tmp_path: Path, monkeypatch) -> None:
    """The disk fills in the middle of a flush: the part of it that reached the file is cut off
    again, the error reaches the caller, and every line in the file is a whole record."""
    path = tmp_path / "results.jsonl"
    sink = JsonlSink(path)
    sink.write(_record(0), None)
    sink.flush()
    real_write, calls = os.write, []

    def write_until_full(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:len(data) // 2]))     # a short write, then ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("engine.io.sinks.os.write", write_until_full)
    for frame_id in (1, 2, 3):
        sink.write(_record(frame_id), None)
    with pytest.raises(OSError) as err:
        sink.flush()
    assert err.value.errno == errno.ENOSPC and len(calls) == 2
    monkeypatch.undo()
    assert path.read_bytes().endswith(b"\n")
    assert [json.loads(line)["frame_id"] for line in path.read_text().splitlines()] == [0]
    sink.write(_record(1), None)                               # space again: writing goes on
    sink.close()
    assert [json.loads(line)["frame_id"] for line in path.read_text().splitlines()] == [0, 1]


def test_draw_marks_box_label_and_keypoints_on_a_copy() -> None:
    frame = np.zeros((200, 300, 3), np.uint8)
    record = _record(0, detections=(_detection([50.0, 80.0, 150.0, 180.0], keypoints=[[100.0, 130.0]]),))
    out = draw(frame, record)
    assert not frame.any()                                   # the original is untouched
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert out[80:181, 50].any() and out[180, 50:151].any()  # box edges
    assert out[128:133, 98:103].any()                        # keypoint
    assert out[60:78, 50:120].any()                          # label above the box
    assert not out[190:, 200:].any() and not out[:40, 200:].any()


def test_draw_classification_and_error() -> None:
    frame = np.full((120, 160, 3), 128, np.uint8)
    top = draw(frame, _record(0, classes=(Classification("cat", 3, 0.9),)))
    assert (top[:20, :60] != 128).any() and (top[60:] == 128).all()
    error = draw(frame, _record(0, status="error", stage="decode", error="truncated JPEG: data/ü.jpg"))
    red = (error[:, :, 2] > 200) & (error[:, :, 0] < 50) & (error[:, :, 1] < 50)
    assert red.sum() > 50


def test_draw_uses_labels_when_record_has_none() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    det = Detection("", 1, 0.5, (10, 30, 90, 90))
    a = draw(frame, _record(0, detections=(det,)), labels=["background", "face"])
    b = draw(frame, _record(0, detections=(Detection("face", 1, 0.5, (10, 30, 90, 90)),)))
    assert np.array_equal(a, b)


def test_image_sink_names_and_content(tmp_path: Path) -> None:
    sink = ImageSink(tmp_path / "images", labels=[])
    frame = np.full((60, 80, 3), 90, np.uint8)
    cases = [(_record(0, source="data/cat.png"), "cat.jpg"),
             (_record(1, source="clips/walk.mp4", frame_index=12), "walk_000012.jpg"),
             (_record(2, source="rtsp://cam.local:554/live?x=1", frame_index=3), "live_000003.jpg"),
             (_record(3, source="0", frame_index=4), "0_000004.jpg"),
             (_record(4, source="data/日本.jpg"), "日本.jpg"),
             (_record(5, source="other/cat.jpg"), "cat_5.jpg")]
    for record, name in cases:
        assert sink.file_name(record) == name
        sink.write(record, frame)
        image = cv2.imdecode(np.fromfile(tmp_path / "images" / name, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == frame.shape
    sink.write(_record(6, source="data/none.jpg"), None)
    sink.close()
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(name for _, name in cases)


def test_video_sink_writes_readable_video(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "annotated.mp4", fps=10)
    for i in range(6):
        shape = (90, 121, 3) if i != 3 else (45, 60, 3)      # odd width, and one frame of another size
        record = _record(i, detections=(_detection([5, 5, 40, 40]),))
        sink.write(record, np.full(shape, i * 30, np.uint8))
    sink.write(_record(6), None)
    sink.close()
    cap = cv2.VideoCapture(str(sink.path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 6 and all(f.shape == (90, 120, 3) for f in frames)
    assert abs(float(frames[5][60:, 60:].mean()) - 150) < 8


@pytest.mark.parametrize("jsonl, images, video", [(True, False, False), (True, True, True), (False, False, False)])
def test_open_sinks(tmp_path: Path, jsonl: bool, images: bool, video: bool) -> None:
    out = tmp_path / "run"
    sinks = open_sinks(OutputConfig(dir=str(out), jsonl=jsonl, images=images, video=video))
    assert out.is_dir()
    assert [type(s) for s in sinks] == [t for t, on in ((JsonlSink, jsonl), (PerStream, images),
                                                        (PerStream, video)) if on]
    for sink in sinks:
        sink.write(_record(0, source="a.jpg"), np.zeros((32, 32, 3), np.uint8))
        sink.write(_record(0, source="b.jpg", stream="door"), np.zeros((32, 32, 3), np.uint8))
        sink.close()
    assert (out / "results.jsonl").exists() is jsonl
    assert (out / "images" / "cam" / "a.jpg").exists() is images            # one folder per stream
    assert (out / "images" / "door" / "b.jpg").exists() is images
    assert (out / "video" / "cam.mp4").exists() is video                   # one video per stream
    assert (out / "video" / "door.mp4").exists() is video
