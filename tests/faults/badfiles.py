"""Generators of bad and unusual input files, shared by the fault tests.

Helpers for single images (encode, EXIF orientation, CMYK, palette, hand-made PNG chunks), a
builder for a whole folder of bad and odd entries with what each must become, and an MJPG video
with a corrupt frame in the middle. Nothing here runs the engine.
"""
from __future__ import annotations

import io
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import COCO

FACE_IMAGE = "000000009378.jpg"          # 600×400, one face near [355, 81, 426, 152]
FACE_BOX = (355, 81, 426, 152)
NO_FACE_IMAGE = "000000000139.jpg"       # a living room, no face the detector reports


def encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return data.tobytes()


def pattern(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth colour content (JPEG-friendly) that differs per seed."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)),
                    np.full((h, w), seed * 37 % 256)], axis=-1)
    return img.astype(np.uint8)


def exif_jpeg(image: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    """A JPEG with an EXIF APP1 segment holding only the orientation tag (0x0112)."""
    jpeg = encode(".jpg", image, cv2.IMWRITE_JPEG_QUALITY, quality)
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]   # after SOI + JFIF APP0
    return jpeg[:app0_end] + app1 + jpeg[app0_end:]


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels to store with EXIF ``orientation`` so that a viewer shows ``upright``."""
    if orientation == 6:          # viewer rotates 90° clockwise
        return cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if orientation == 8:          # viewer rotates 90° counter-clockwise
        return cv2.rotate(upright, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 3:
        return cv2.rotate(upright, cv2.ROTATE_180)
    return upright


def pil_bytes(image_bgr: np.ndarray, mode: str, fmt: str, **save: object) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).convert(mode).save(buf, fmt, **save)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header_only(width: int, height: int) -> bytes:
    """Signature and IHDR (8-bit RGB), nothing else."""
    return PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def png_claiming(width: int, height: int, data: bytes = b"\x00" * 64) -> bytes:
    """A well-formed PNG whose header claims ``width × height`` but whose IDAT holds almost nothing
    (a decompression-bomb-like header, or a zero-height picture)."""
    return (png_header_only(width, height) + png_chunk(b"IDAT", zlib.compress(data))
            + png_chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A tiny JPEG (16×16 of data) whose frame header claims ``width × height``."""
    data = bytearray(encode(".jpg", np.zeros((16, 16, 3), np.uint8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def corrupt_png(png: bytes) -> bytes:
    """Zeros over the middle of the IDAT data: the CRC and the zlib stream fail."""
    data = bytearray(png)
    mid = len(data) // 2
    data[mid:mid + 64] = b"\x00" * 64
    return bytes(data)


def garble_jpeg_middle(jpeg: bytes, seed: int = 3) -> bytes:
    """Random bytes over a stretch of the entropy-coded data (markers kept out): libjpeg usually
    decodes it with a warning and smeared blocks."""
    data = bytearray(jpeg)
    sos = jpeg.find(b"\xff\xda")
    start = sos + (len(jpeg) - sos) // 2
    noise = np.random.default_rng(seed).integers(0, 255, 400, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    data[start:start + len(noise)] = noise
    return bytes(data)


@dataclass(frozen=True)
class Entry:
    """One directory entry of the bad-input folder and what its record must be."""

    name: str
    ok: bool                      # status "ok" expected (False: "error")
    face: tuple[float, float, float, float] | None = None   # a face near this box expected
    either: bool = False          # garbled but possibly decodable: ok or error both pass


def build_bad_folder(folder: Path) -> tuple[list[Entry], list[str]]:
    """Fill ``folder`` with ≥ 20 kinds of bad or unusual image entries plus good COCO images.

    Returns the image entries (each must give exactly one record) and the names of entries
    without an image extension, which the source must ignore.
    """
    folder.mkdir(parents=True, exist_ok=True)
    face_bytes = (COCO / FACE_IMAGE).read_bytes()
    face = cv2.imread(str(COCO / FACE_IMAGE))
    other = (COCO / NO_FACE_IMAGE).read_bytes()
    small = pattern(60, 80)
    png = encode(".png", small)
    entries: list[Entry] = []

    def put(name: str, data: bytes, ok: bool, face_box=None, either: bool = False) -> None:
        (folder / name).write_bytes(data)
        entries.append(Entry(name, ok, face_box, either))

    # good COCO images
    put(FACE_IMAGE, face_bytes, True, FACE_BOX)
    put(NO_FACE_IMAGE, other, True)
    put("000000001296.jpg", (COCO / "000000001296.jpg").read_bytes(), True)
    # broken files
    put("b01_empty.jpg", b"", False)
    put("b02_truncated.jpg", face_bytes[:len(face_bytes) // 3], False)
    put("b03_truncated.png", png[:len(png) // 2], False)
    put("b04_garbled_middle.jpg", garble_jpeg_middle(face_bytes), True, either=True)
    put("b05_corrupt.png", corrupt_png(png), False)
    put("b06_text.jpg", b"this is a text file, not a JPEG\n" * 4, False)
    put("b07_header_only.png", png_header_only(64, 48), False)
    put("b08_zero_height.png", png_claiming(64, 0), False)
    put("b09_bomb.png", png_claiming(100_000, 100_000), False)
    put("b09_bomb.jpg", jpeg_claiming(60_000, 60_000), False)   # 3.6 G pixels: over OpenCV's limit
    (folder / "b10_broken_link.jpg").symlink_to(folder / "does_not_exist.jpg")
    entries.append(Entry("b10_broken_link.jpg", False))
    os.mkfifo(folder / "b11_fifo.jpg")                    # would block a naive open() forever
    entries.append(Entry("b11_fifo.jpg", False))
    (folder / "b12_directory.png").mkdir()
    entries.append(Entry("b12_directory.png", False))
    # unusual but valid
    put("u01_cmyk.jpg", pil_bytes(face, "CMYK", "JPEG", quality=95), True, FACE_BOX)
    put("u02_deep16.png", encode(".png", face.astype(np.uint16) * 257), True, FACE_BOX)
    put("u03_gray.png", encode(".png", cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)), True)
    put("u04_gray.jpg", encode(".jpg", cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)), True)
    put("u05_rgba.png", encode(".png", np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])), True, FACE_BOX)
    put("u06_palette.png", pil_bytes(face, "P", "PNG"), True)
    put("u07_exif6.jpg", exif_jpeg(stored_for_orientation(face, 6), 6), True, FACE_BOX)
    put("u08_exif6_sideways.jpg", exif_jpeg(face, 6), True)   # shown turned 90° clockwise: 400×600
    put("u09_exif8.jpg", exif_jpeg(stored_for_orientation(face, 8), 8), True, FACE_BOX)
    put("u10_one_pixel.png", encode(".png", np.full((1, 1, 3), 200, np.uint8)), True)
    put("u11_one_pixel.jpg", encode(".jpg", np.full((1, 1, 3), 90, np.uint8)), True)
    put("日本語 ü.jpg", face_bytes, True, FACE_BOX)
    put("u12_UPPER.JPG", face_bytes, True, FACE_BOX)
    put("u13_web.webp", encode(".webp", face, cv2.IMWRITE_WEBP_QUALITY, 95), True, FACE_BOX)
    put("u14_bitmap.bmp", encode(".bmp", face), True, FACE_BOX)
    put("u15_tagged.tiff", encode(".tiff", small), True)
    put("u16_jpeg_named.png", face_bytes, True, FACE_BOX)  # content, not extension, decides
    put(".u17_hidden.jpeg", face_bytes, True, FACE_BOX)
    huge = np.zeros((10000, 10000, 3), np.uint8)           # the face picture ×16 inside a 10000² JPEG
    cv2.resize(face, (9600, 6400), dst=huge[:6400, :9600], interpolation=cv2.INTER_LINEAR)
    put("u18_huge_10000.jpg", encode(".jpg", huge, cv2.IMWRITE_JPEG_QUALITY, 80), True,
        tuple(16 * v for v in FACE_BOX))
    del huge
    # entries without an image extension: not frames
    (folder / "notes.txt").write_text("not an image")
    (folder / "subfolder").mkdir()
    (folder / "subfolder" / "nested.jpg").write_bytes(face_bytes)  # not listed: recursive = false
    (folder / "README").write_bytes(face_bytes)
    return entries, ["notes.txt", "subfolder", "README"]


def write_video(path: Path, frames: int, size: tuple[int, int] = (160, 120)) -> None:
    """An MJPG .avi: frame i is a flat grey level 8·i on top, noise below."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((size[1], size[0], 3), i * 8 % 256, np.uint8)
        image[size[1] // 2:] = np.random.default_rng(i).integers(0, 256, (size[1] - size[1] // 2, size[0], 3))
        writer.write(image)
    writer.release()


def corrupt_video_frames(path: Path, frames: list[int], length: int = 2000) -> None:
    """Random bytes over the JPEG header of each listed frame of an MJPG file."""
    data = bytearray(path.read_bytes())
    starts = [m.start() for m in re.finditer(b"\xff\xd8\xff", bytes(data))]   # one JPEG per frame
    rng = np.random.default_rng(1)
    for k in frames:
        data[starts[k]:starts[k] + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
