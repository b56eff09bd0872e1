"""Frame sources: image folders, video files, cameras and network streams as one iterator.

Every source yields :class:`SourceItem` in order. A bad input (corrupt file, failed frame, lost
stream) becomes an item with ``error`` set and iteration goes on; it never raises and never skips
an index. File sources give deterministic indices (``loop * n + i``) so a replay after a crash
can ``skip`` finished frames without reading them. Live sources read in a background thread
into a one-frame buffer: a consumer that falls behind loses the older frame, counted in ``drops``.
"""
from __future__ import annotations

import os
import re
import stat
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.config import SourceConfig
from engine.config.streams import is_live_uri, redact_uri
from engine.core import paths
from engine.core.errors import ConfigError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg"})
OPEN_TIMEOUT_S = 5.0        # a stream URL that does not answer fails after this long
READ_TIMEOUT_S = 5.0        # a stream that stops sending counts as lost after this long
BACKOFF_START_S = 0.5       # first reconnect delay; doubles per failed attempt
BACKOFF_MAX_S = 8.0
MAX_DECODE_FAILURES = 8     # consecutive failed video reads taken as the end of the file
REALTIME_IMAGE_FPS = 30.0   # a realtime image folder without max_fps delivers this many per second
DECODE_THREADS = min(4, os.cpu_count() or 1)   # images of one unpaced folder decoded at once

Skip = Callable[[int], bool]


@dataclass(slots=True)
class SourceItem:
    """One frame, or one failure to produce it."""

    index: int                 # frame id: loop * n + i for files; running count for live streams
    locator: str               # image path, video path, or stream URI
    frame_index: int           # index inside that file (video frame number; 0 for still images)
    frame: np.ndarray | None   # BGR uint8, H×W×3, C-contiguous; None when error
    error: str | None          # one line: what and where
    original_size: tuple[int, int] | None = None   # (width, height) when decoded at a reduced size
    t_ns: int = 0              # monotonic ns: reading began (files) or the frame arrived (streams)
    cpu_ns: int = 0            # CPU time another thread spent reading it (a folder's decoding threads)


class Source(ABC):
    """An iterator of :class:`SourceItem`; iterate once, then :meth:`close`."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.drops = 0                 # frames overwritten before the consumer took them (live only)
        self.expected = 0              # frames this source will yield (files; 0 = unknown or endless)
        self.reconnecting = False      # a live stream is lost and being re-opened
        self.failed = ""               # why the source ended for good (cannot open, gave up)
        self.events: list[str] = []    # notices (reconnect attempts); take them with drain_events()
        self._closed = threading.Event()
        self._cond = threading.Condition()
        self._latest: SourceItem | None = None
        self._pending: deque[SourceItem] = deque()   # live error items: never dropped
        self._done = False
        self._failure: Exception | None = None
        self._thread: threading.Thread | None = None
        self._items: Generator[SourceItem, None, None] | None = None

    @abstractmethod
    def _read(self) -> Generator[SourceItem, None, None]:
        """Items in order, read synchronously; stops early once ``self._closed`` is set."""

    def __iter__(self) -> Iterator[SourceItem]:
        self._items = self._live_items() if self.live else self._read()
        return self._items

    def drain_events(self) -> list[str]:
        """Take the notices gathered since the last call (thread-safe)."""
        with self._cond:
            events, self.events = self.events, []
        return events

    def cancel(self) -> None:
        """Ask the reader to stop (returns at once; :meth:`close` then waits for it)."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stop reading and release the file or device; a reader thread blocked in a device read
        is given a second, then left to exit (and release) on its own."""
        self.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._items is not None and not self.live:   # a live reader thread closes its own
            try:
                self._items.close()
            except ValueError:   # being iterated in another thread: it stops at its next check of _closed
                pass

    def _note(self, event: str) -> None:
        with self._cond:
            self.events.append(event)

    # ---- live mode: a reader thread and a one-frame buffer -------------------------------------

    def _live_items(self) -> Generator[SourceItem, None, None]:
        self._thread = threading.Thread(target=self._produce, name=f"source-{type(self).__name__}",
                                        daemon=True)
        self._thread.start()
        while True:
            with self._cond:
                while not (self._pending or self._latest is not None or self._done or self._closed.is_set()):
                    self._cond.wait()
                if self._closed.is_set():
                    return
                item = self._take()
                if item is None:
                    if self._failure is not None:
                        raise RuntimeError(f"source reader failed: {self._failure!r}") from self._failure
                    return
            yield item

    def _take(self) -> SourceItem | None:
        if self._pending and (self._latest is None or self._pending[0].index < self._latest.index):
            return self._pending.popleft()
        item, self._latest = self._latest, None
        return item

    def _produce(self) -> None:
        items = self._read()
        try:
            for item in items:
                with self._cond:
                    if item.error is not None:
                        self._pending.append(item)
                    else:
                        if self._latest is not None:
                            self.drops += 1
                        self._latest = item
                    self._cond.notify()
                if self._closed.is_set():
                    break
        except Exception as exc:  # a reader bug: re-raised in the consumer's thread
            self._failure = exc
        finally:
            items.close()
            with self._cond:
                self._done = True
                self._cond.notify_all()


# ---- image folders and single images ----------------------------------------------------------

_DIGITS = re.compile(r"([0-9]+)")


def _natural_key(relative: str) -> tuple:
    """Sort key: per path component, digit runs compare as numbers (img2 < img10)."""
    parts = tuple(tuple((0, int(tok), "") if odd % 2 else (1, 0, tok)   # split() puts digit runs at odd places
                        for odd, tok in enumerate(_DIGITS.split(part)) if tok)
                  for part in relative.split(os.sep))
    return parts, relative


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    """Entries with an image extension (any file type: the reader reports what is wrong)."""
    found: list[Path] = []
    if recursive:
        def unlistable(exc: OSError) -> None:
            raise ConfigError(f"source folder {folder}: cannot list {exc.filename}: {exc.strerror}")
        for root, _dirs, files in os.walk(folder, onerror=unlistable):
            found.extend(Path(root) / name for name in files
                         if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)
    else:
        try:
            with os.scandir(folder) as entries:
                found = [Path(e.path) for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
        except OSError as exc:
            raise ConfigError(f"source folder {folder}: cannot list it: {exc.strerror}") from None
    return sorted(found, key=lambda p: _natural_key(os.path.relpath(p, folder)))


_FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"),
            (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"GIF8", "GIF"))


def _decode_failure(data: np.ndarray) -> str:
    """Why bytes that OpenCV refused are not an image, judged from their signature."""
    head, tail = data[:12].tobytes(), data[-16:].tobytes()
    fmt = "WEBP" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else \
        next((name for magic, name in _FORMATS if head.startswith(magic)), None)
    if fmt is None:
        return "not an image (unrecognised data)"
    if (fmt == "JPEG" and not tail.endswith(b"\xff\xd9")) or (fmt == "PNG" and b"IEND" not in tail):
        return f"truncated {fmt}"
    return f"corrupt or unsupported {fmt}"


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def as_bgr8(frame: np.ndarray) -> np.ndarray:
    """A decoded frame as BGR uint8 H×W×3, C-contiguous (gray, BGRA and 16-bit normalised)."""
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    if frame.ndim == 2 or frame.shape[2] == 1:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame)


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding; None if not found."""
    buf = data.tobytes()[:1 << 16] if data.size > 1 << 16 else data.tobytes()
    if buf[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(buf):
        if buf[i] != 0xFF:
            return None
        marker, length = buf[i + 1], int.from_bytes(buf[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(buf[i + 7:i + 9], "big"), int.from_bytes(buf[i + 5:i + 7], "big")
        i += 2 + length
    return None


# OpenCV refuses to decode more pixels than this (env OPENCV_IO_MAX_IMAGE_PIXELS); checked on the
# header's full size, so a reduced-size decode cannot slip a decompression bomb past it.
MAX_IMAGE_PIXELS = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))


def header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) claimed by a JPEG frame header or a PNG IHDR; None for other formats."""
    if data[:8].tobytes() == b"\x89PNG\r\n\x1a\n" and data[12:16].tobytes() == b"IHDR":
        return int.from_bytes(data[16:20].tobytes(), "big"), int.from_bytes(data[20:24].tobytes(), "big")
    return jpeg_size(data)


_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_flag(data: np.ndarray, min_side: int) -> int:
    """IMREAD_COLOR, or a reduced-size JPEG decode (DCT scaling) that still leaves both sides
    at least ``min_side`` pixels. The model never sees the difference; decoding is only ~15%
    cheaper (Huffman decoding dominates), but the frame copied and resized is 4–64× smaller."""
    size = jpeg_size(data) if min_side > 0 else None
    if size is not None:
        for factor, flag in _REDUCED:
            if min(size) // factor >= min_side:
                return flag
    return cv2.IMREAD_COLOR


def load_image(path: Path, min_side: int = 0) -> tuple[np.ndarray | None, str | None, tuple[int, int] | None]:
    """Decode one image file (EXIF orientation applied): ``(frame, error, original_size)``.

    ``min_side`` > 0 allows a reduced-size decode of large JPEGs (see :func:`decode_flag`); then
    ``original_size`` is the full (width, height), as oriented, else None.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return None, f"broken symlink: {path} -> {os.readlink(path)}", None
        return None, f"file vanished: {path}", None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}", None
    if not stat.S_ISREG(info.st_mode):
        return None, f"not an image file ({_file_type(info.st_mode)}): {path}", None
    if info.st_size == 0:
        return None, f"empty file: {path}", None
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}", None
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        return None, f"image too large: {size[0]}x{size[1]} pixels (limit {MAX_IMAGE_PIXELS}): {path}", None
    if data[:4].tobytes() == b"GIF8":                  # one frame per file: an animation is an error record
        try:
            frames = cv2.imcount(str(path))
        except cv2.error:
            frames = 1
        if frames > 1:
            return None, (f"animated GIF ({frames} frames): images in a folder are read as stills; "
                          f"convert it to a video to read every frame: {path}"), None
    try:
        flag = decode_flag(data, min_side)
        frame = cv2.imdecode(data, flag)               # every IMREAD_* colour flag applies EXIF orientation
    except cv2.error as exc:
        return None, f"cannot decode {path}: {exc.err or exc}", None
    except MemoryError:
        return None, f"image too large for memory: {path}", None
    if frame is None:
        return None, f"{_decode_failure(data)}: {path}", None
    original = None
    if flag != cv2.IMREAD_COLOR:
        w, h = jpeg_size(data)                         # type: ignore[misc]
        original = (w, h) if (frame.shape[1] >= frame.shape[0]) == (w >= h) else (h, w)
    return as_bgr8(frame), None, original


class FolderSource(Source):
    """Images of a folder (or one image file), in natural path order, ``loop`` times. Read at full
    speed, :data:`DECODE_THREADS` images decode at once, a few ahead, and come out in order."""

    def __init__(self, paths: list[Path], loop: int, skip: Skip | None, live: bool, min_side: int = 0,
                 fps: float = 0.0) -> None:
        super().__init__(live)
        self.paths = paths
        self.expected = len(paths) * loop
        self._loop = loop
        self._skip = skip
        self._min_side = min_side
        self._period = 1.0 / fps if fps > 0 else 0.0    # realtime: one image per period

    def _images(self) -> Iterator[tuple[int, Path]]:
        """(index, path) of every image still to read, in order."""
        n = len(self.paths)
        for loop in range(self._loop):
            for i, path in enumerate(self.paths):
                if self._skip is None or not self._skip(loop * n + i):
                    yield loop * n + i, path

    def _load(self, index: int, path: Path, in_pool: bool = False) -> SourceItem:
        """Read one image; ``in_pool``: on a decoding thread, whose CPU time the item carries."""
        t_ns, c_ns = time.monotonic_ns(), time.thread_time_ns()
        frame, error, original = load_image(path, self._min_side)
        cpu_ns = time.thread_time_ns() - c_ns if in_pool else 0
        return SourceItem(index, str(path), 0, frame, error, original, t_ns, cpu_ns)

    def _read(self) -> Generator[SourceItem, None, None]:
        if self._period or DECODE_THREADS < 2:
            yield from self._read_paced()
            return
        # unpaced: several images decode at once (OpenCV releases the GIL), yielded in order
        with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode") as pool:
            images = self._images()
            ahead: deque[Future[SourceItem]] = deque()
            try:
                while not self._closed.is_set():
                    while len(ahead) < 2 * DECODE_THREADS and (image := next(images, None)) is not None:
                        ahead.append(pool.submit(self._load, *image, True))
                    if not ahead:
                        return
                    yield ahead.popleft().result()
            finally:
                for future in ahead:
                    future.cancel()

    def _read_paced(self) -> Generator[SourceItem, None, None]:
        due = time.monotonic()
        for index, path in self._images():
            if self._period:
                self._closed.wait(max(0.0, due - time.monotonic()))
                due = max(due + self._period, time.monotonic())
            if self._closed.is_set():
                return
            yield self._load(index, path)


# ---- video files -------------------------------------------------------------------------------

def ffmpeg_threads(configured: int, streams: int, cores: int | None = None) -> int:
    """FFmpeg's decoding threads per video stream (0: FFmpeg chooses, about one per core):
    ``configured`` when set; else 1 once ``streams`` (all the pipeline decodes) are at least as
    many as the machine's cores. The streams keep the cores busy by themselves then, and frame threading
    only adds its hand-offs: a 640×480 MPEG-4 frame costs 0.62 core-ms on one thread against
    0.8–1.1 with FFmpeg's default on 2 cores (docs/benchmarks.md, "Stream density")."""
    if configured:
        return configured
    return 1 if streams >= (cores or os.cpu_count() or 1) else 0


def ffmpeg_params(threads: int) -> list[int]:
    """``cv2.VideoCapture`` open parameters for ``threads`` FFmpeg threads (none for 0: its default)."""
    return [cv2.CAP_PROP_N_THREADS, threads] if threads > 0 else []


class VideoSource(Source):
    """A video file through OpenCV's FFMPEG backend; a frame that fails mid-file is an error item.

    A failed read followed by a good one marks a corrupt frame; ``MAX_DECODE_FAILURES`` failures
    in a row end the file. Indices count reads, failed ones included, so they stay deterministic.
    """

    def __init__(self, path: Path, loop: int, skip: Skip | None, live: bool, realtime: bool = False,
                 threads: int = 0) -> None:
        super().__init__(live)
        self.path = path
        self._loop = loop
        self._skip = skip
        self._realtime = realtime or live    # a live file plays in real time
        self._threads = threads              # FFmpeg's decoding threads (0: its default)

    def _read(self) -> Generator[SourceItem, None, None]:
        n = 0
        for loop in range(self._loop):
            count = yield from self._pass(loop * n)
            n = n or count
            if self._closed.is_set():
                return

    def _pass(self, base: int) -> Generator[SourceItem, None, int]:
        """One play of the file with indices from ``base``; returns the number of indices used."""
        where = str(self.path)
        cap = cv2.VideoCapture(where, cv2.CAP_FFMPEG, ffmpeg_params(self._threads))
        try:
            if not cap.isOpened():
                self.failed = f"cannot open video (missing codec or not a video): {where}"
                yield SourceItem(base, where, 0, None, self.failed)
                return 1
            expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.expected = max(self.expected, expected * self._loop)
            fps = cap.get(cv2.CAP_PROP_FPS)
            period = 1.0 / fps if self._realtime and fps > 0 else 0.0
            due = time.monotonic()
            i = failed = 0
            while not self._closed.is_set():
                skipped = self._skip is not None and self._skip(base + i)
                if skipped:
                    ok, frame = cap.grab(), None
                else:
                    if period and not failed:       # a failed read is retried at once: the end of the file
                        self._closed.wait(max(0.0, due - time.monotonic()))   # is MAX_DECODE_FAILURES of them
                        due = max(due + period, time.monotonic())
                    t_ns = time.monotonic_ns()
                    ok, frame = cap.read()
                if not ok:
                    failed += 1
                    i += 1
                    if failed > MAX_DECODE_FAILURES:
                        break
                    continue
                for k in range(i - failed, i):      # failures followed by a good frame: corrupt frames
                    if self._skip is None or not self._skip(base + k):
                        yield SourceItem(base + k, where, k, None, f"corrupt video frame {k}: {where}")
                failed = 0
                if frame is not None:                # None: skipped, grabbed only
                    yield SourceItem(base + i, where, i, as_bgr8(frame), None, t_ns=t_ns)
                i += 1
            i -= failed                              # trailing failures were the end of the file
            if self._closed.is_set():
                return i
            if i == 0 or expected - i > max(2, expected // 100):  # counts of index-less files are estimates
                yield SourceItem(base + i, where, i, None,
                                 f"video ended early: {i} of {expected} frames decoded: {where}")
                i += 1
            return i
        finally:
            cap.release()


# ---- cameras and network streams ---------------------------------------------------------------

class CaptureSource(Source):
    """A camera (index or /dev/video*) or an RTSP/HTTP(S) stream, reconnected with backoff when lost.

    The first open is not retried: a wrong URI fails at once (within ``OPEN_TIMEOUT_S``) with one
    error item. A lost stream is retried ``attempts`` times (0.5 s doubling to 8 s), each noted in
    ``events``; after that iteration ends with one error item. ``skip`` does not apply: indices
    are a running count of frames read.
    """

    def __init__(self, uri: str, attempts: int, live: bool, threads: int = 0) -> None:
        super().__init__(live)
        self.uri = uri
        self._attempts = attempts
        self._threads = threads              # FFmpeg's decoding threads of a network stream (0: its default)

    def _open(self) -> cv2.VideoCapture | None:
        if self.uri.isdigit():
            cap = cv2.VideoCapture(int(self.uri))
        elif self.uri.startswith("/dev/"):
            cap = cv2.VideoCapture(self.uri, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(OPEN_TIMEOUT_S * 1000),
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(READ_TIMEOUT_S * 1000),
                                    *ffmpeg_params(self._threads)])
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _read(self) -> Generator[SourceItem, None, None]:
        cap = self._open()
        if cap is None:
            why = ("camera (no such device, or busy)" if self.uri.isdigit() or self.uri.startswith("/dev/")
                   else f"stream (refused, no answer within {OPEN_TIMEOUT_S:g} s, or not a video)")
            self.failed = f"cannot open {why}: {redact_uri(self.uri)}"
            yield SourceItem(0, self.uri, 0, None, self.failed)
            return
        i = failures = 0
        try:
            while not self._closed.is_set():
                if cap is None:
                    self.reconnecting = True
                    if failures == self._attempts:
                        self.reconnecting = False
                        self.failed = (f"stream lost: {redact_uri(self.uri)} (gave up after {failures} "
                                       "reconnect attempts)")
                        yield SourceItem(i, self.uri, i, None, self.failed)
                        return
                    delay = min(BACKOFF_START_S * 2 ** failures, BACKOFF_MAX_S)
                    failures += 1
                    self._note(f"{redact_uri(self.uri)}: stream lost, reconnect attempt {failures}/{self._attempts} "
                               f"in {delay:g} s")
                    if self._closed.wait(delay):
                        return
                    cap = self._open()
                    continue
                ok, frame = cap.read()
                if not ok:
                    cap.release()
                    cap = None
                    continue
                failures = 0
                self.reconnecting = False
                yield SourceItem(i, self.uri, i, as_bgr8(frame), None, t_ns=time.monotonic_ns())
                i += 1
        finally:
            if cap is not None:
                cap.release()


# ---- choosing a source -------------------------------------------------------------------------

def _existing(uri: str) -> Path | None:
    """The path ``uri`` names (relative: to the working directory, else a bundled resource)."""
    candidate = paths.resolve(uri)
    return candidate if os.path.lexists(candidate) else None


def open_source(cfg: SourceConfig, skip: Skip | None = None, min_side: int = 0, threads: int = 0) -> Source:
    """The source ``cfg.uri`` names: folder, image, video, camera or stream; else a ConfigError.

    ``skip(index)`` true means that frame is already done: it is not read (file sources only).
    ``min_side`` > 0 lets large JPEGs decode at a reduced size whose shorter side stays >= it.
    ``threads``: FFmpeg's decoding threads for a video file or network stream (0: its default).
    """
    uri = cfg.uri.strip()
    forced = {"yes": True, "no": False}.get(cfg.live)
    image_fps = (cfg.max_fps or REALTIME_IMAGE_FPS) if cfg.realtime else 0.0
    path = _existing(uri)
    if path is not None and path.is_dir():
        paths = _list_images(path, cfg.recursive)
        if not paths:
            raise ConfigError(f"source folder {uri}: no images "
                              f"({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})"
                              f"{'' if cfg.recursive else '; set [source] recursive = true for subfolders'}")
        return FolderSource(paths, cfg.loop, skip, bool(forced), min_side, image_fps)
    if path is not None and path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            return VideoSource(path, cfg.loop, skip, bool(forced), cfg.realtime, threads)
        if suffix in IMAGE_EXTENSIONS:
            return FolderSource([path], cfg.loop, skip, bool(forced), min_side, image_fps)
        raise ConfigError(f"source {uri}: '{suffix or 'no extension'}' is neither an image "
                          f"({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                          f"nor a video ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    if is_live_uri(uri):
        return CaptureSource(uri, cfg.reconnect_attempts, forced is not False, threads)
    raise ConfigError(f"source '{uri}': no such file or folder, and not a camera index, /dev/video* device "
                      f"or rtsp:// http:// https:// URL")
