"""`ovstream eval` end to end: real engine runs of the bundled models on bundled images."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import load_registry

REPO = Path(__file__).resolve().parents[2]
FACE_IMAGES = ("000000005193.jpg", "000000006954.jpg", "000000008690.jpg")  # COCO val2017, with faces
MNIST_SAMPLES = REPO / "data" / "mnist_samples"


def ovstream_eval(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "eval", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=240)


def test_face_detector_agrees_with_itself(tmp_path):
    data = tmp_path / "coco"
    data.mkdir()
    for name in FACE_IMAGES:
        shutil.copy(REPO / "data" / "coco100" / name, data)
    out = tmp_path / "out"
    proc = ovstream_eval("face", "--agreement", "face", "--data", str(data), "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["candidate"]["frames"] == report["reference"]["frames"] == len(FACE_IMAGES)
    assert report["candidate"]["errors"] == 0
    assert report["agreement"]["reference_boxes"] > 0
    assert report["agreement"]["map"] == pytest.approx(1.0)
    assert json.loads((out / "metrics.json").read_text())["agreement"] == report["agreement"]


@pytest.mark.skipif(not (REPO / "models" / "mnist").is_dir() or "mnist" not in load_registry(),
                    reason="models/mnist and its 'mnist' registry entry are not there yet "
                           "(made by `ovstream train-mnist`)")
def test_mnist_top1_from_a_labels_list(tmp_path):
    samples = sorted(MNIST_SAMPLES.glob("*.png"))
    listing = tmp_path / "val_list.txt"
    listing.write_text("".join(f"{p.name} {p.name.split('-')[0]}\n" for p in samples))
    proc = ovstream_eval("mnist", "--data", str(MNIST_SAMPLES), "--labels-list", str(listing),
                         "--output", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["candidate"]["metrics"]
    assert metrics["images"] == len(samples) and metrics["unanswered"] == 0
    assert metrics["top1"] >= 0.8 and metrics["top5"] >= metrics["top1"]


def test_usage_error_is_one_line(tmp_path):
    proc = ovstream_eval("face", "--data", str(REPO / "data" / "coco100"), "--output", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nothing to measure" in proc.stderr
