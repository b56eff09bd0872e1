"""`ovstream eval` with the engine run replaced by canned records: configs, truth, report, exit codes."""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from engine.config import tomllib  # the stdlib module, or tomli on Python 3.10
from engine.core.errors import ConfigError, OvstreamError
from engine.core.results import Classification, Detection, FrameResult
from engine.tools.modeltools import evaluate


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(list(argv))


def face_record(source: Path, shift: float = 0.0) -> FrameResult:
    return FrameResult("images", 0, str(source), 0, device="CPU", worker="inference-0",
                       detections=(Detection("face", 0, 0.9, (10 + shift, 10, 60 + shift, 70)),))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    data = tmp_path / "images"
    data.mkdir()
    for name in ("000000000139.jpg", "000000000285.jpg"):
        (data / name).write_bytes(b"")
    return data


def fake_engine(monkeypatch, answers) -> list[dict]:
    """Replace the engine run; ``answers(config) -> records``. Returns the configs it was given."""
    configs = []

    def run_engine(config_path: Path, out_dir: Path) -> list[FrameResult]:
        config = tomllib.loads(config_path.read_text())
        configs.append(config)
        return answers(config)
    monkeypatch.setattr(evaluate, "run_engine", run_engine)
    return configs


def test_detector_agreement_report(monkeypatch, images, tmp_path, capsys):
    sources = sorted(images.iterdir())
    configs = fake_engine(monkeypatch, lambda cfg: [face_record(s) for s in sources])
    out = tmp_path / "out"
    code = evaluate.main(parse("face", "--data", str(images), "--agreement", "face", "--output", str(out)))
    assert code == 0
    assert [c["model"]["name"] for c in configs] == ["face", "face"]
    assert configs[0]["source"] == {"uri": str(images), "recursive": False}
    assert configs[0]["dashboard"]["enabled"] is False and configs[0]["inference"]["devices"] == ["CPU"]
    report = json.loads((out / "metrics.json").read_text())
    assert report["kind"] == "detection" and report["agreement"]["map"] == pytest.approx(1.0)
    assert report["candidate"]["errors"] == 0 and report["reference"]["frames"] == 2
    assert "agreement mAP@[.5:.95]" in capsys.readouterr().out


def test_detector_coco_map_json(monkeypatch, images, tmp_path, capsys):
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 139, "file_name": "000000000139.jpg"}, {"id": 285, "file_name": "000000000285.jpg"}],
        "categories": [{"id": 0, "name": "face"}],
        "annotations": [{"id": 1, "image_id": 139, "category_id": 0, "bbox": [10, 10, 50, 60], "area": 3000,
                         "iscrowd": 0}]}))
    configs = fake_engine(monkeypatch, lambda cfg: [face_record(s) for s in sorted(images.iterdir())])
    code = evaluate.main(parse("face", "--data", str(images), "--annotations", str(annotations),
                               "--output", str(tmp_path / "out"), "--json"))
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    # COCO AP is computed over low-score detections too: the run keeps them, and the report says so
    assert configs[0]["model"]["score_threshold"] == evaluate.EVAL_SCORE_THRESHOLD == 0.01
    assert report["coco"]["score_threshold"] == 0.01 and report["coco"]["categories"] == "index"
    assert report["candidate"]["metrics"]["map50"] == pytest.approx(1.0)   # one FP ranked below the hit
    assert report["candidate"]["metrics"]["images"] == 2


def test_classifier_file_with_labels_list(monkeypatch, tmp_path, capsys):
    data = tmp_path / "digits"
    data.mkdir()
    for name in ("3-0.png", "7-1.png", "7-2.png"):
        (data / name).write_bytes(b"")
    listing = tmp_path / "val_list.txt"
    listing.write_text("3-0.png 3\n7-1.png 7\n7-2.png 7\n")
    model = tmp_path / "digits.onnx"
    model.write_bytes(b"")

    def answers(cfg: dict) -> list[FrameResult]:
        def rec(name: str, ranked: list[int], status: str = "ok") -> FrameResult:
            if status != "ok":
                return FrameResult.failed("digits", 0, str(data / name), 0, "decode", "boom")
            return FrameResult("digits", 0, str(data / name), 0,
                               classes=tuple(Classification(str(c), c, 0.5) for c in ranked))
        return [rec("3-0.png", [3, 8]), rec("7-1.png", [1, 7]), rec("7-2.png", [], "error")]
    configs = fake_engine(monkeypatch, answers)
    monkeypatch.setenv("COLUMNS", "240")
    code = evaluate.main(parse(str(model), "--adapter", "classification", "--data", str(data),
                               "--labels-list", str(listing), "--output", str(tmp_path / "out")))
    out = capsys.readouterr().out
    assert code == 1, "a failed frame makes the exit code 1"
    assert configs[0]["model"] == {"name": "digits", "path": str(model), "adapter": "classification",
                                   "top_k": 5}
    assert configs[0]["source"]["recursive"] is True
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["candidate"]["metrics"] == {"top1": 1 / 3, "top5": 2 / 3, "images": 3, "unanswered": 1}
    assert report["candidate"]["errors"] == 1 and "boom" in report["candidate"]["first_error"]
    assert "top-1 accuracy" in out and "1 frames failed" in out


@pytest.mark.parametrize("argv, message", [
    (["face"], "nothing to measure"),
    (["face", "--labels-list", "x.txt"], "scores classifiers"),
    (["model.onnx"], "give its adapter"),
    (["nosuchmodel", "--agreement", "face"], "not in"),
    (["face", "--annotations", "missing.json"], "No such file"),
    (["face", "--annotations", "model.onnx"], "not JSON"),
])
def test_usage_errors(monkeypatch, images, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    Path("model.onnx").write_bytes(b"")
    fake_engine(monkeypatch, lambda cfg: pytest.fail("the engine must not run"))
    with pytest.raises(OvstreamError, match=message):
        evaluate.main(parse(*argv, "--data", str(images)))


def test_run_engine_exit_codes(monkeypatch, tmp_path):
    config = tmp_path / "run.toml"
    outcome = {}
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, outcome["rc"], stdout="", stderr=outcome.get("stderr", "")))
    outcome.update(rc=2, stderr="ovstream run: error: [inference] batch must be >= 1\n")
    with pytest.raises(ConfigError, match="batch must be"):
        evaluate.run_engine(config, tmp_path)
    outcome.update(rc=0)
    with pytest.raises(evaluate.RunFailed, match="no .*results.jsonl"):
        evaluate.run_engine(config, tmp_path)
    outcome.update(rc=-9, stderr="")
    with pytest.raises(evaluate.RunFailed, match="exit -9"):
        evaluate.run_engine(config, tmp_path)
    (tmp_path / "results.jsonl").write_text(
        FrameResult.failed("s", 0, "a.jpg", 0, "decode", "unreadable").to_json() + "\n\n"
        + FrameResult("s", 1, "b.jpg", 0, detections=()).to_json() + "\n")
    outcome.update(rc=1)
    assert [r.frame_id for r in evaluate.run_engine(config, tmp_path)] == [0, 1]
    with open(tmp_path / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"frame_id": 2}\n')                  # not a result: named, not skipped
    with pytest.raises(evaluate.RunFailed, match="results.jsonl:4: not a frame result"):
        evaluate.run_engine(config, tmp_path)
    assert (tmp_path / "run.log").exists()
