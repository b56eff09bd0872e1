"""Bad and unusual inputs through the real pipeline: every entry becomes exactly one record, a bad
one an error record naming its file, an odd-but-valid one a correct result; nothing hangs."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.conftest import run_ovstream
from tests.faults.badfiles import build_bad_folder, corrupt_video_frames, write_video


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _assert_face_near(record: dict, box, scale: float = 1.0) -> None:
    faces = [d for d in record.get("detections", []) if d["label"] == "face"]
    assert faces, f"{record['source']}: no face found"
    best = max(faces, key=lambda d: d["score"])
    (cx, cy), (ex, ey) = _centre(best["box"]), _centre(box)
    tolerance = 12 * scale
    assert abs(cx - ex) < tolerance and abs(cy - ey) < tolerance, (record["source"], best["box"], box)
    width, expected_width = best["box"][2] - best["box"][0], box[2] - box[0]
    assert 0.75 < width / expected_width < 1.33, (record["source"], best["box"], box)


def test_folder_of_bad_and_unusual_files(engine_env, tmp_path):
    folder = tmp_path / "inputs"
    entries, ignored = build_bad_folder(folder)
    assert len(entries) >= 30 and len({e.name for e in entries}) == len(entries)

    result = run_ovstream("--model", "face", "--source", str(folder), output=tmp_path / "out", env=engine_env,
                          timeout=180)
    assert result.code == 1, result.stderr                        # finished, with error records
    assert "Traceback" not in result.stderr

    records = result.records
    assert [r["frame_id"] for r in records] == list(range(len(entries)))   # one per entry, in order
    names = [Path(r["source"]).name for r in records]
    assert sorted(names) == sorted(e.name for e in entries)                # nothing else (no .txt, no subfolder)
    assert not set(names) & set(ignored) and "nested.jpg" not in names
    by_name = {Path(r["source"]).name: r for r in records}

    wrong = []
    for entry in entries:
        record = by_name[entry.name]
        assert record["frame_index"] == 0 and Path(record["source"]).parent == folder, record
        if entry.either and record["status"] == "error":
            assert entry.name in record["error"], record
            continue
        if entry.ok and record["status"] != "ok":
            wrong.append(f"{entry.name}: expected ok, got {record.get('error')!r}")
        elif not entry.ok and record["status"] != "error":
            wrong.append(f"{entry.name}: expected an error record, got {record['status']!r}")
        elif not entry.ok:
            error = record.get("error") or ""
            if entry.name not in error or "\n" in error or record.get("stage") != "decode":
                wrong.append(f"{entry.name}: error record does not name the file in one line: {record}")
        elif entry.face is not None:
            try:
                _assert_face_near(record, entry.face, scale=16 if "huge" in entry.name else 1)
            except AssertionError as exc:
                wrong.append(f"{entry.name}: {exc}")
    assert not wrong, "\n".join(wrong)

    # the sideways copy (EXIF 6 over upright pixels) is read turned: no upright face where the original has one
    sideways = by_name["u08_exif6_sideways.jpg"]
    assert not any(abs(_centre(d["box"])[0] - 390) < 12 and abs(_centre(d["box"])[1] - 116) < 12
                   for d in sideways["detections"])
    for tiny in ("u10_one_pixel.png", "u11_one_pixel.jpg"):
        assert by_name[tiny]["detections"] == []

    acc = result.report["accounting"]
    errors = sum(1 for r in records if r["status"] == "error")
    assert acc["in"] == len(entries) and acc["errors"] == errors and acc["out"] == len(entries) - errors
    assert acc["drops"] == 0 and acc["balanced"]
    assert f"{errors} frames failed" in result.stderr


def test_video_with_corrupt_frames_in_the_middle(engine_env, tmp_path):
    video = tmp_path / "broken.avi"
    write_video(video, 40)
    corrupt_video_frames(video, [12, 25, 26])
    result = run_ovstream("--model", "face", "--source", str(video), "--batch", "2", output=tmp_path / "out",
                          env=engine_env,
                          timeout=120)
    assert result.code == 1, result.stderr
    records = result.records
    assert [r["frame_id"] for r in records] == list(range(40))
    assert [r["frame_index"] for r in records] == list(range(40))        # in order, none lost
    failed = [r for r in records if r["status"] == "error"]
    assert [r["frame_index"] for r in failed] == [12, 25, 26]
    for r in failed:
        assert r["error"] == f"corrupt video frame {r['frame_index']}: {video}" and r["stage"] == "decode"
    assert all(r["status"] == "ok" and r["source"] == str(video) for r in records if r not in failed)
    acc = result.report["accounting"]
    assert (acc["in"], acc["out"], acc["errors"], acc["balanced"]) == (40, 37, 3, True)


class _SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self._thread.join(timeout=2)


def test_stream_url_that_never_answers_ends_in_bounded_time(engine_env, tmp_path):
    server = _SilentServer()
    url = f"http://127.0.0.1:{server.port}/live.mjpg"
    config = tmp_path / "silent.toml"
    config.write_text(f'[source]\nuri = "{url}"\nreconnect_attempts = 0\n[model]\nname = "face"\n', encoding="utf-8")
    try:
        started = time.monotonic()
        result = run_ovstream(str(config), output=tmp_path / "out", env=engine_env, timeout=90)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert server.accepted, "the engine never connected"
    assert elapsed < 40, f"took {elapsed:.1f} s"               # open timeout 5 s + start-up and stop
    assert result.code != 0 and "Traceback" not in result.stderr
    records = result.records
    if records:                                                # the documented way: one error record
        assert result.code == 1
        assert len(records) == 1 and records[0]["status"] == "error", records
        assert url in records[0]["error"] and "cannot open stream" in records[0]["error"]
        acc = result.report["accounting"]
        assert (acc["in"], acc["out"], acc["errors"], acc["balanced"]) == (1, 0, 1, True)
    else:                                                      # or a clear one-line failure
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and url in lines[0], result.stderr
