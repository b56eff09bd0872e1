"""Frame sources on data made here: folders of good and bad images, videos, a local MJPEG server."""
from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.config import SourceConfig
from engine.core.errors import ConfigError
from engine.io import sources
from engine.io.sources import CaptureSource, FolderSource, SourceItem, VideoSource, open_source
from tests.faults.badfiles import encode, exif_jpeg, pattern


def _cfg(uri: str | Path, **kw) -> SourceConfig:
    return SourceConfig(uri=str(uri), **kw)


def _read_all(cfg: SourceConfig, skip=None) -> list[SourceItem]:
    src = open_source(cfg, skip)
    try:
        return list(src)
    finally:
        src.close()


def _check_frame(item: SourceItem) -> np.ndarray:
    assert item.error is None, item.error
    frame = item.frame
    assert frame is not None and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.flags.c_contiguous
    return frame


# ---- folders -------------------------------------------------------------------------------------

def test_folder_order_is_natural_and_recursive_is_optional(tmp_path: Path) -> None:
    for name in ("img10.jpg", "img2.jpg", "img1.png", "img3.JPEG", "sub/a.jpg", "notes.txt", "sub/deeper/b.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encode(Path(name).suffix if name != "notes.txt" else ".png", pattern()))
    flat = _read_all(_cfg(tmp_path))
    assert [Path(i.locator).name for i in flat] == ["img1.png", "img2.jpg", "img3.JPEG", "img10.jpg"]
    assert [i.index for i in flat] == [0, 1, 2, 3] and all(i.frame_index == 0 for i in flat)
    deep = _read_all(_cfg(tmp_path, recursive=True))
    assert [os.path.relpath(i.locator, tmp_path) for i in deep] == [
        "img1.png", "img2.jpg", "img3.JPEG", "img10.jpg", "sub/a.jpg", "sub/deeper/b.bmp"]
    for item in deep:
        _check_frame(item)


def test_folder_loop_and_skip_do_not_read_skipped_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        (tmp_path / f"f{i}.png").write_bytes(encode(".png", pattern(seed=i)))
    looped = _read_all(_cfg(tmp_path, loop=2))
    assert [i.index for i in looped] == list(range(6))
    assert [Path(i.locator).name for i in looped] == ["f0.png", "f1.png", "f2.png"] * 2

    loaded: list[Path] = []
    real_load = sources.load_image
    monkeypatch.setattr(sources, "load_image", lambda p, min_side=0: (loaded.append(p), real_load(p))[1])
    done = {0, 1, 2, 4}
    items = _read_all(_cfg(tmp_path, loop=2), skip=done.__contains__)
    assert [i.index for i in items] == [3, 5]
    assert [p.name for p in loaded] == ["f0.png", "f2.png"]


def test_unpaced_folder_decodes_on_several_threads_and_keeps_its_order(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(12):
        (tmp_path / f"f{i:02d}.png").write_bytes(encode(".png", pattern(seed=i)))
    threads: set[str] = set()
    real_load = sources.load_image

    def slow_load(path, min_side=0):        # each image takes a while: decodes must overlap
        threads.add(threading.current_thread().name)
        time.sleep(0.02)
        return real_load(path, min_side)

    monkeypatch.setattr(sources, "DECODE_THREADS", 3)
    monkeypatch.setattr(sources, "load_image", slow_load)
    items = _read_all(_cfg(tmp_path))
    assert [Path(i.locator).name for i in items] == [f"f{i:02d}.png" for i in range(12)]
    assert [i.index for i in items] == list(range(12))
    assert len(threads) == 3 and all(name.startswith("decode") for name in threads)
    assert all(i.cpu_ns > 0 for i in items)           # the decoding threads' CPU, for the profile
    threads.clear()
    paced = _read_all(_cfg(tmp_path, realtime=True, max_fps=1000))
    assert [i.index for i in paced] == list(range(12)) and all(i.cpu_ns == 0 for i in paced)
    assert threads == {threading.current_thread().name}      # paced: read by the caller, one by one


@pytest.mark.parametrize("orientation, shape, top_left", [
    (1, (20, 40), "red"), (3, (20, 40), "blue"), (6, (40, 20), "red"), (8, (40, 20), "blue")])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, shape: tuple, top_left: str) -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = (0, 0, 255)      # left half red
    image[:, 20:] = (255, 0, 0)      # right half blue
    path = tmp_path / "rotated.jpg"
    path.write_bytes(exif_jpeg(image, orientation))
    (item,) = _read_all(_cfg(path))
    frame = _check_frame(item)
    assert frame.shape[:2] == shape
    b, _, r = (int(v) for v in frame[3, 3])
    assert (r > 200 and b < 60) if top_left == "red" else (b > 200 and r < 60)


def test_bad_and_odd_files_each_give_one_item_and_iteration_goes_on(tmp_path: Path) -> None:
    good = pattern(60, 80)
    gray = good[:, :, 0].copy()
    jpeg = encode(".jpg", good)
    png = encode(".png", good)
    corrupt_png = bytearray(png)
    corrupt_png[len(png) // 2:len(png) // 2 + 64] = b"\x00" * 64
    files: dict[str, bytes] = {
        "a01_good.jpg": jpeg,
        "a02_empty.jpg": b"",
        "a03_truncated.jpg": jpeg[:len(jpeg) * 2 // 3],
        "a04_corrupt.png": bytes(corrupt_png),
        "a05_text.jpg": b"this is a text file, not a JPEG\n",
        "a06_gray.png": encode(".png", gray),
        "a07_rgba.png": encode(".png", np.dstack([good, np.full(good.shape[:2], 7, np.uint8)])),
        "a08_deep.png": encode(".png", good.astype(np.uint16) * 257),
        "a09_tiny.png": encode(".png", np.full((1, 1, 3), 200, np.uint8)),
        "a10_café_日本.jpg": jpeg,
        "a11_bitmap.bmp": encode(".bmp", good),
        "a12_tagged.tiff": encode(".tiff", good),
        "a13_web.webp": encode(".webp", good, cv2.IMWRITE_WEBP_QUALITY, 101),
        "a14_truncated.png": png[:len(png) // 2],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "a15_broken.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(tmp_path / "a16_pipe.jpg")             # would block a naive reader forever
    (tmp_path / "a17_folder.jpg").mkdir()

    items = _read_all(_cfg(tmp_path))
    by_name = {Path(i.locator).name: i for i in items}
    assert [i.index for i in items] == list(range(17))
    errors = {name: item.error for name, item in by_name.items() if item.error is not None}
    assert set(errors) == {"a02_empty.jpg", "a03_truncated.jpg", "a04_corrupt.png", "a05_text.jpg",
                           "a14_truncated.png", "a15_broken.jpg", "a16_pipe.jpg", "a17_folder.jpg"}
    for name, error in errors.items():
        assert name in error and "\n" not in error and by_name[name].frame is None
    assert errors["a02_empty.jpg"].startswith("empty file")
    assert errors["a03_truncated.jpg"].startswith("truncated JPEG")
    assert errors["a04_corrupt.png"].startswith("corrupt or unsupported PNG")
    assert errors["a05_text.jpg"].startswith("not an image")
    assert errors["a14_truncated.png"].startswith("truncated PNG")
    assert errors["a15_broken.jpg"].startswith("broken symlink")
    assert "FIFO" in errors["a16_pipe.jpg"] and "directory" in errors["a17_folder.jpg"]

    assert np.array_equal(_check_frame(by_name["a06_gray.png"]), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    for name in ("a07_rgba.png", "a08_deep.png", "a11_bitmap.bmp", "a12_tagged.tiff", "a13_web.webp"):
        assert np.array_equal(_check_frame(by_name[name]), good), name
    assert _check_frame(by_name["a09_tiny.png"]).shape == (1, 1, 3)
    assert np.array_equal(_check_frame(by_name["a10_café_日本.jpg"]), _check_frame(by_name["a01_good.jpg"]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; FIFO/directory cases cover root")
def test_unreadable_file_is_an_error_item(tmp_path: Path) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(encode(".jpg", pattern()))
    path.chmod(0)
    (item,) = _read_all(_cfg(tmp_path))
    assert item.frame is None and item.error and "Permission denied" in item.error


def test_gif_in_a_folder_still_is_a_frame_animated_is_an_error_item(tmp_path: Path) -> None:
    """Never skipped without a word: a still GIF is read, an animation is an error record
    (a folder item is one frame; every frame of an animation needs it as a video)."""
    from PIL import Image
    frames = [Image.fromarray(np.full((40, 60, 3), 40 * i, np.uint8)) for i in range(4)]
    frames[0].save(tmp_path / "a_still.gif")
    frames[0].save(tmp_path / "b_anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    still, anim = _read_all(_cfg(tmp_path))
    assert _check_frame(still).shape == (40, 60, 3)
    assert anim.frame is None and anim.error and anim.error.startswith("animated GIF (4 frames)"), anim.error
    assert "b_anim.gif" in anim.error


def test_cmyk_jpeg_is_converted_to_bgr(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    good = pattern(60, 80)
    buf = io.BytesIO()
    pil.fromarray(good[:, :, ::-1]).convert("CMYK").save(buf, "JPEG", quality=95)
    (tmp_path / "cmyk.jpg").write_bytes(buf.getvalue())
    (item,) = _read_all(_cfg(tmp_path / "cmyk.jpg"))
    assert np.abs(_check_frame(item).astype(int) - good).mean() < 12


def test_very_large_image(tmp_path: Path) -> None:
    image = np.zeros((10000, 10000, 3), np.uint8)
    image[:5000, :, 2] = 200
    path = tmp_path / "huge.jpg"
    path.write_bytes(encode(".jpg", image))
    del image
    (item,) = _read_all(_cfg(path))
    frame = _check_frame(item)
    assert frame.shape == (10000, 10000, 3)
    assert frame[100, 100, 2] > 190 and frame[9000, 100, 2] < 10


# ---- video files ---------------------------------------------------------------------------------

def _frame_number(frame: np.ndarray) -> int:
    return round(float(frame[:8].mean()) / 8)


def _write_video(path: Path, frames: int, size: tuple[int, int] = (64, 48), fourcc: str = "MJPG") -> list[np.ndarray]:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, size)
    assert writer.isOpened()
    images = []
    for i in range(frames):
        image = np.full((size[1], size[0], 3), i * 8, np.uint8)    # top half: the frame number
        image[size[1] // 2:] = np.random.default_rng(i).integers(0, 256, (size[1] - size[1] // 2, size[0], 3))
        writer.write(image)
        images.append(image)
    writer.release()
    return images


def test_video_frames_in_order_loop_and_skip(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, 12)
    items = _read_all(_cfg(path, loop=2))
    assert [i.index for i in items] == list(range(24))
    assert [i.frame_index for i in items] == list(range(12)) * 2
    for item in items:
        frame = _check_frame(item)
        assert _frame_number(frame) == item.frame_index
        assert item.locator == str(path)

    done = set(range(5)) | set(range(12, 20))
    rest = _read_all(_cfg(path, loop=2), skip=done.__contains__)
    assert [i.index for i in rest] == [5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23]
    for item in rest:
        assert _frame_number(_check_frame(item)) == item.frame_index


def test_video_with_corrupt_middle_reports_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "broken.avi"
    _write_video(path, 30, (160, 120))
    data = bytearray(path.read_bytes())
    frame_starts = [m.start() for m in re.finditer(b"\xff\xd8\xff", bytes(data))]   # MJPG: one JPEG per frame
    assert len(frame_starts) == 30
    start = frame_starts[15]          # garbage over frame 15's JPEG header: FFmpeg fails that read
    data[start:start + 2000] = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    items = _read_all(_cfg(path))
    assert [i.index for i in items] == list(range(30))
    assert [i.index for i in items if i.error] == [15]
    assert items[15].error == f"corrupt video frame 15: {path}" and items[15].frame is None
    for item in items[:15] + items[16:]:
        assert _frame_number(_check_frame(item)) == item.frame_index


def test_truncated_and_unreadable_videos(tmp_path: Path) -> None:
    path = tmp_path / "cut.avi"
    _write_video(path, 30, (160, 120))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 6 // 10])
    items = _read_all(_cfg(path))
    assert all(i.error is None for i in items[:-1]) and len(items) > 5
    assert items[-1].error and items[-1].error.startswith("video ended early")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    (item,) = _read_all(_cfg(fake))
    assert item.error and item.error.startswith("cannot open video")


# ---- source kinds --------------------------------------------------------------------------------

def test_open_source_detects_kinds(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(encode(".png", pattern()))
    (tmp_path / "notes.txt").write_text("hello")
    _write_video(tmp_path / "v.mp4", 2, fourcc="mp4v")
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path, FolderSource, False), (tmp_path / "x.png", FolderSource, False),
             (tmp_path / "v.mp4", VideoSource, False), ("0", CaptureSource, True),
             ("/dev/video7", CaptureSource, True), ("rtsp://127.0.0.1:9/x", CaptureSource, True),
             ("HTTPS://127.0.0.1:9/x", CaptureSource, True)]
    for uri, kind, live in cases:
        src = open_source(_cfg(uri))
        assert isinstance(src, kind) and src.live is live, uri
        src.close()
    assert open_source(_cfg(tmp_path, live="yes")).live is True
    assert open_source(_cfg("0", live="no")).live is False
    for uri, words in ((tmp_path / "nope", "no such file"), (tmp_path / "notes.txt", "neither an image"),
                       (tmp_path / "empty", "no images"), ("ftp://x/y", "not a camera index")):
        with pytest.raises(ConfigError, match=words) as err:
            open_source(_cfg(uri))
        assert str(uri) in str(err.value)


def test_missing_camera_gives_one_error_item() -> None:
    items = _read_all(_cfg("/dev/video99"))
    assert len(items) == 1 and items[0].error and "/dev/video99" in items[0].error


def test_live_video_file_drops_oldest_for_a_slow_consumer(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, 20)                          # 25 fps: 0.8 s in real time
    src = open_source(_cfg(path, live="yes"))
    taken = []
    for item in src:
        taken.append(item)
        time.sleep(0.1)
    src.close()
    assert 4 <= len(taken) < 20 and src.drops == 20 - len(taken)
    assert [i.index for i in taken] == sorted(i.index for i in taken) and taken[-1].index == 19


# ---- network streams: a local MJPEG-over-HTTP server ---------------------------------------------

class _MjpegHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        server: _MjpegServer = self.server  # type: ignore[assignment]
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            while not server.stopping.is_set():
                if server.stalled.is_set():         # connection open, nothing sent
                    time.sleep(0.01)
                    continue
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                 % (len(server.jpeg), server.jpeg))
                time.sleep(server.period)
        except (BrokenPipeError, ConnectionResetError):
            return


class _MjpegServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, fps: float = 100.0) -> None:
        super().__init__(("127.0.0.1", port), _MjpegHandler)
        self.stopping = threading.Event()
        self.stalled = threading.Event()
        self.period = 1.0 / fps
        self.jpeg = encode(".jpg", pattern(120, 160))
        self.url = f"http://127.0.0.1:{self.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def mjpeg_server():
    server = _MjpegServer()
    yield server
    server.stop()


def test_http_mjpeg_stream_is_live_and_drops_oldest(mjpeg_server: _MjpegServer) -> None:
    src = open_source(_cfg(mjpeg_server.url))
    assert src.live
    taken = []
    for item in src:
        taken.append(item)
        _check_frame(item)
        if len(taken) == 6:
            break
        time.sleep(0.1)                          # 100 fps served, 10 fps consumed
    src.close()
    assert item.frame.shape == (120, 160, 3) and item.locator == mjpeg_server.url
    indices = [i.index for i in taken]
    assert indices == sorted(set(indices))
    assert src.drops >= indices[-1] + 1 - len(taken) > 0


def test_http_stream_reconnects_after_server_restart(mjpeg_server: _MjpegServer) -> None:
    port = mjpeg_server.server_address[1]
    src = open_source(_cfg(mjpeg_server.url, reconnect_attempts=5))
    items = iter(src)
    before = [next(items) for _ in range(3)]
    mjpeg_server.stop()
    time.sleep(0.2)
    restarted = _MjpegServer(port)
    try:
        after = [next(items) for _ in range(3)]
    finally:
        src.close()
        restarted.stop()
    assert all(i.error is None for i in before + after)
    assert after[0].index > before[-1].index
    events = src.drain_events()
    assert events and "reconnect attempt 1/5" in events[0] and src.drain_events() == []


def test_http_stream_gives_up_after_reconnect_attempts(mjpeg_server: _MjpegServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BACKOFF_START_S", 0.05)
    src = open_source(_cfg(mjpeg_server.url, reconnect_attempts=2))
    items = iter(src)
    next(items)
    mjpeg_server.stop()
    rest = list(items)
    src.close()
    assert rest and all(i.error is None for i in rest[:-1])
    assert rest[-1].error == f"stream lost: {mjpeg_server.url} (gave up after 2 reconnect attempts)"
    assert len(src.drain_events()) == 2


def test_http_stream_that_stalls_counts_as_lost(mjpeg_server: _MjpegServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("READ_TIMEOUT_S", 1.0), ("OPEN_TIMEOUT_S", 1.0), ("BACKOFF_START_S", 0.05)):
        monkeypatch.setattr(sources, name, value)
    src = open_source(_cfg(mjpeg_server.url, reconnect_attempts=1))
    items = iter(src)
    next(items)
    mjpeg_server.stalled.set()
    start = time.monotonic()
    rest = list(items)
    src.close()
    assert time.monotonic() - start < 6.0
    assert rest[-1].error and rest[-1].error.startswith("stream lost") and len(src.drain_events()) == 1


def test_url_that_never_answers_fails_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "OPEN_TIMEOUT_S", 1.0)
    with socket.create_server(("127.0.0.1", 0)) as silent:     # accepts connections, never replies
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/live"
        start = time.monotonic()
        items = _read_all(_cfg(url))
        elapsed = time.monotonic() - start
    assert elapsed < 5.0
    assert len(items) == 1 and items[0].frame is None
    assert items[0].error and items[0].error.startswith("cannot open stream") and url in items[0].error


def test_large_jpeg_decodes_at_reduced_size_with_its_original_size(tmp_path: Path) -> None:
    from engine.io.sources import jpeg_size, load_image
    image = np.zeros((480, 640, 3), np.uint8)
    cv2.rectangle(image, (100, 100), (300, 200), (255, 255, 255), -1)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), image)
    assert jpeg_size(np.fromfile(path, np.uint8)) == (640, 480)
    full, _, original = load_image(path)
    assert full.shape == (480, 640, 3) and original is None
    half, _, original = load_image(path, min_side=192)     # 480/2 = 240 >= 192, 480/4 = 120 < 192
    assert half.shape == (240, 320, 3) and original == (640, 480)
    assert half[75, 100].mean() > 200 and half[20, 20].mean() < 30
    png = tmp_path / "big.png"
    cv2.imwrite(str(png), image)
    assert load_image(png, min_side=192)[0].shape == (480, 640, 3)   # only JPEGs have DCT scaling


def test_a_looped_realtime_video_keeps_its_rate_across_the_loop(tmp_path: Path) -> None:
    """The failed reads that mark a file's end are retried at once, not one frame period each: a
    camera-like file of 10 frames at 25 fps looped 4 times plays in 1.6 s (it took 8 periods more
    per loop: 2.8 s in all)."""
    path = tmp_path / "clip.avi"
    _write_video(path, 10)
    src = VideoSource(path, 4, None, live=False, realtime=True)
    t0 = time.monotonic()
    items = [item for item in src if item.frame is not None]
    took = time.monotonic() - t0
    assert len(items) == 40 and took < 2.2, took                     # 1.56 s of periods, with a margin


def _ffmpeg_thread_count() -> int:
    """Threads of this process that FFmpeg's decoders started (named ``av:<codec>:…``)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:
            continue
    return sum(name.startswith("av:") for name in names)


@pytest.mark.parametrize("threads, decoding_threads", [(1, False), (2, True)])
def test_video_decodes_on_the_ffmpeg_threads_it_is_given(tmp_path: Path, threads: int,
                                                         decoding_threads: bool) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, 12, size=(160, 120), fourcc="mp4v")
    source = open_source(_cfg(path), threads=threads)
    try:
        items = iter(source)
        first = next(items)
        assert _frame_number(_check_frame(first)) == 0
        assert (_ffmpeg_thread_count() > 0) == decoding_threads
        assert [i.frame_index for i in items] == list(range(1, 12))
    finally:
        source.close()


def test_ffmpeg_threads_one_per_stream_once_streams_fill_the_cores() -> None:
    assert sources.ffmpeg_threads(0, streams=1, cores=4) == 0       # FFmpeg's own choice
    assert sources.ffmpeg_threads(0, streams=3, cores=4) == 0
    assert sources.ffmpeg_threads(0, streams=4, cores=4) == 1
    assert sources.ffmpeg_threads(0, streams=16, cores=2) == 1
    assert sources.ffmpeg_threads(3, streams=16, cores=2) == 3      # [pipeline] decode_threads wins
