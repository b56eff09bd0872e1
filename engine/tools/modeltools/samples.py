"""The bundled sample data the project makes itself (``data/PROVENANCE.toml`` says which files).

* ``data/clip.mp4``: a 640×480, 30 FPS video made from the registry photos in
  ``data/samples/`` (slow pans and zooms over each, a short cross-fade between them), so the
  default run has a stream as well as files;
* ``data/mnist_samples/D-K.png``: one held-out digit per class from ``data/mnist_5k.npz``
  (D = the digit, K = its index in the npz);
* ``data/coco91_labels.tsv`` (line i = COCO category id i, line 0 = background, as TF OD API
  detectors number classes) and ``data/coco80_labels.tsv`` (the 80 used categories in id order, as
  80-class detectors such as NanoDet and YOLO number them), from :data:`COCO_CATEGORIES`.

Run ``python -m engine.tools.modeltools.samples`` to write them again; the video is deterministic for
a given OpenCV build.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from engine.core import paths
from engine.tools.modeltools.datasets import TRAIN_PER_CLASS, image_files

log = logging.getLogger(__name__)

# COCO's category names by id (1..90), the 10 ids COCO defines but never annotates included.
COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
COCO_UNANNOTATED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})

CLIP_SIZE = (640, 480)
CLIP_FPS = 30.0
FRAMES_PER_PHOTO = 60
FADE_FRAMES = 8


def _ken_burns(photo: np.ndarray, frames: int, size: tuple[int, int], zoom_in: bool) -> list[np.ndarray]:
    """``frames`` views of ``photo`` at the aspect of ``size``: a zoom from the whole photo to 75 % of
    it (or back) while the window drifts from one side to the other."""
    height, width = photo.shape[:2]
    aspect = size[0] / size[1]
    full_w = min(width, height * aspect)
    views = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        scale = 1.0 - 0.25 * (t if zoom_in else 1.0 - t)
        w = full_w * scale
        h = w / aspect
        x = (width - w) * t
        y = (height - h) * 0.5
        matrix = np.array([[size[0] / w, 0.0, -x * size[0] / w], [0.0, size[1] / h, -y * size[1] / h]])
        views.append(cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT))
    return views


def write_clip(photos: list[Path], target: Path, size: tuple[int, int] = CLIP_SIZE,
               fps: float = CLIP_FPS, frames_per_photo: int = FRAMES_PER_PHOTO) -> int:
    """Write the sample clip (mp4v) from ``photos``; returns its number of frames."""
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"{target}: cv2.VideoWriter cannot write mp4v here")
    count = 0
    previous: np.ndarray | None = None
    for index, path in enumerate(photos):
        photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if photo is None:
            raise RuntimeError(f"{path}: not a readable image")
        for n, view in enumerate(_ken_burns(photo, frames_per_photo, size, zoom_in=index % 2 == 0)):
            if previous is not None and n < FADE_FRAMES:
                weight = (n + 1) / (FADE_FRAMES + 1)
                view = cv2.addWeighted(previous, 1.0 - weight, view, weight, 0)
            writer.write(view)
            count += 1
        previous = view
    writer.release()
    return count


def write_mnist_digits(npz: Path, folder: Path) -> list[Path]:
    """One held-out digit per class (the first after the training ones) as ``D-K.png``."""
    with np.load(npz) as data:
        images, labels = data["images"], data["labels"]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for digit in range(10):
        index = int(np.flatnonzero(labels == digit)[TRAIN_PER_CLASS])
        path = folder / f"{digit}-{index}.png"
        cv2.imwrite(str(path), images[index])
        written.append(path)
    return written


def coco_label_files() -> dict[str, str]:
    """The two COCO label tables' names and texts: ``COCO id<TAB>name`` per line, line i = class i."""
    coco91 = list(enumerate(["background", *COCO_CATEGORIES]))
    coco80 = [(cid, name) for cid, name in enumerate(COCO_CATEGORIES, 1) if cid not in COCO_UNANNOTATED_IDS]
    return {name: "".join(f"{cid}\t{label}\n" for cid, label in rows)
            for name, rows in (("coco91_labels.tsv", coco91), ("coco80_labels.tsv", coco80))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=paths.bundled("data"), help="the data folder to write into")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    samples = args.data / "samples"
    frames = write_clip(image_files(samples), args.data / "clip.mp4")
    log.info("%s: %d frames", args.data / "clip.mp4", frames)
    for name, text in coco_label_files().items():
        (args.data / name).write_text(text, encoding="utf-8")
        log.info("%s", args.data / name)
    for path in write_mnist_digits(args.data / "mnist_5k.npz", args.data / "mnist_samples"):
        log.info("%s", path)


if __name__ == "__main__":
    main()
