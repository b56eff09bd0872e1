"""`ovstream eval --diagnose`: deliberately misconfigured entries of bundled models are diagnosed right,
and a correct entry is not "fixed"."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main as cli
from engine.config import ModelConfig
from engine.core.geometry import Geometry
from engine.core.results import Detection, FrameResult
from engine.tools.modeltools.diagnose import Diagnoser, diagnose, rescaled
from engine.tools.modeltools.evaluate import read_labels_list, resolve_section
from tests.conftest import COCO, COCO_ANNOTATIONS, REPO, shared

pytest.importorskip("pycocotools", reason="pycocotools not installed (pip install -e '.[tools]')")

IMAGENET = shared("data/imagenet_samples_dev")     # one ImageNet image per class for 500 classes (measuring only)
IMAGES = 60


def _effnet(**preprocess: object) -> ModelConfig:
    cfg = resolve_section({"name": "efficientnet_lite0"})
    return cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update=preprocess)})


def _classifier_diagnosis(cfg: ModelConfig) -> str | None:
    truth = read_labels_list(IMAGENET / "val_list.txt", IMAGENET, list(cfg.labels))
    found = diagnose(Diagnoser(cfg, [Path(p) for p in sorted(truth)[:IMAGES]], truth=truth))
    return found.found.label if found.found else None


def test_a_classifier_fed_bgr_is_told_to_take_rgb() -> None:
    assert _classifier_diagnosis(_effnet(color="BGR")) == 'color = "RGB"'


def test_a_classifier_with_its_labels_one_off_is_told_the_offset() -> None:
    cfg = _effnet()
    offset = cfg.model_copy(update={"params": {**cfg.params, "label_offset": 1}})
    assert _classifier_diagnosis(offset) == "class ids +1 (label offset, background class)"


def test_a_correct_classifier_is_left_as_it_is() -> None:
    assert _classifier_diagnosis(_effnet()) is None


def test_box_units_are_read_again_through_the_frame_mapping() -> None:
    """A 600x300 frame stretched into a 300x300 input: a normalised box (0.5, 0.25)-(1, 0.75) read as
    input pixels lands in the frame's top-left corner; read again, it is the frame's (300, 75)-(600, 225)."""
    geometry = Geometry.plan(600, 300, 300, 300, "stretch")
    wrong = tuple(float(v) for v in geometry.boxes_to_frame([[0.5 / 300, 0.25 / 300, 1 / 300, 0.75 / 300]])[0])
    record = FrameResult("s", 0, "x.jpg", 0, detections=(Detection("cat", 1, 0.9, wrong),))
    fixed = rescaled(record, geometry, 1.0).detections
    assert fixed is not None and fixed[0].box == pytest.approx((300, 75, 600, 225), abs=1e-3)
    back = rescaled(FrameResult("s", 0, "x.jpg", 0, detections=fixed), geometry, -1.0).detections
    assert back is not None and back[0].box == pytest.approx(wrong, abs=1e-3)


@pytest.mark.slow
def test_a_stretched_detector_fed_letterboxed_is_told_to_stretch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The default SSD registered with letterbox instead of stretch, through the command and a user registry."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    model = REPO / "models" / "ssd_mobilenet_v2_coco" / "mobilenet_ssd_v2_coco_quant_postprocess.tflite"
    (home / "models" / "models.toml").write_text(
        f'[ssd_letterboxed]\nfile = "{model}"\nadapter = "tf_od_api"\nlabels = "data/coco91_labels.tsv"\n'
        f'[ssd_letterboxed.preprocess]\nresize = "letterbox"\ncolor = "RGB"\n'
        f'[ssd_letterboxed.params]\nclass_offset = 1\n', encoding="utf-8")
    monkeypatch.setenv("OVSTREAM_HOME", str(home))
    code = cli(["eval", "ssd_letterboxed", "--data", str(COCO), "--annotations", str(COCO_ANNOTATIONS),
                "--diagnose", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["diagnosis"] == 'resize = "stretch"', report
    assert report["restored"] > report["configured"] + 0.02 and report["images"] == 100


def test_a_second_round_range_follows_the_first_round_colour_flip() -> None:
    """A classifier wants RGB with ImageNet mean/std but is fed BGR with 0–255: the colour flip helps
    alone, and the range tried on top of it is in RGB order (not the BGR order of the config as it was)."""
    from engine.tools.modeltools.diagnose import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, Change, Trial

    class Scored(Diagnoser):
        def __init__(self, cfg: ModelConfig) -> None:          # no model: a score from the settings alone
            self.cfg, self.layout, self.annotations, self.frames = cfg, "NCHW", None, [("x.jpg", None)]
            self.truth = {}

        def trial(self, changes: tuple[Change, ...]) -> Trial:
            pre = self.configured(changes).preprocess
            right_range = pre.mean == list(IMAGENET_MEAN_RGB) and pre.scale == list(IMAGENET_STD_RGB)
            return Trial(changes, 0.2 + 0.3 * (pre.color == "RGB") + 0.4 * (right_range and pre.color == "RGB"))

    found = diagnose(Scored(_effnet(color="BGR", mean=[0.0], scale=[1.0])))
    assert found.found is not None and [c.topic for c in found.found.changes] == ["colour", "range"]
    assert found.found.metric == pytest.approx(0.9)
