"""Conformance: the matching rule, and a reference runtime fed the engine's pixels."""
from __future__ import annotations

import numpy as np
import pytest

from engine.config import RunConfig, resolve_model
from engine.core.results import Detection, FrameResult
from engine.tools.modeltools.conformance import OnnxReference, model_input, reference_records
from engine.tools.modeltools.metrics import detection_conformance
from tests.conftest import COCO


def record(source: str, *detections: tuple[int, float, list[float]]) -> FrameResult:
    return FrameResult("", 0, source, 0, detections=tuple(Detection(str(c), c, s, tuple(b)) for c, s, b in detections))


def test_a_reproduced_detection_needs_class_box_and_score():
    box = [10.0, 10.0, 110.0, 60.0]
    reference = [record("a.jpg", (1, 0.8, box), (2, 0.6, box), (3, 0.5, box), (4, 0.7, box), (5, 0.2, box))]
    candidate = [record("a.jpg",
                        (1, 0.78, [11.0, 10.0, 111.0, 60.0]),    # IoU 0.98, score 0.02 off: reproduced
                        (2, 0.50, box),                          # score 0.1 off: not
                        (3, 0.50, [10.0, 10.0, 110.0, 80.0]),    # IoU 0.71: not
                        (9, 0.70, box))]                         # another class: not
    found = detection_conformance(reference, candidate, min_score=0.3)
    assert (found["reference_detections"], found["reproduced"]) == (4, 1)   # the 0.2 one is not counted
    assert found["rate"] == 0.25 and found["same_count_frames"] == 1


def test_each_candidate_detection_reproduces_one_reference_detection():
    box = [0.0, 0.0, 50.0, 50.0]
    reference = [record("a.jpg", (1, 0.9, box), (1, 0.88, box)), record("b.jpg", (2, 0.9, box))]
    candidate = [record("a.jpg", (1, 0.9, box)), FrameResult.failed("", 0, "b.jpg", 0, "decode", "")]
    found = detection_conformance(reference, candidate)
    assert (found["reference_detections"], found["reproduced"], found["frames"]) == (3, 1, 2)


def test_onnx_reference_sees_the_engine_input_and_decodes_alike():
    """NanoDet in onnxruntime: the input is the engine's (BGR, normalised, NCHW) and the stop sign is found."""
    pytest.importorskip("onnxruntime")
    cfg = resolve_model(RunConfig.from_dict({"model": {"name": "nanodet_m"}})).model
    reference = OnnxReference(cfg.path)
    assert reference.shape == [1, 3, 416, 416] and reference.dtype == np.float32
    pixels = np.zeros((416, 416, 3), np.uint8)
    pixels[..., 2] = 255                                      # pure red, BGR
    tensor = model_input(pixels, cfg, reference)
    assert tensor.shape == (1, 3, 416, 416)
    assert tensor[0, :, 0, 0] == pytest.approx([(0 - 103.53) / 57.375, (0 - 116.28) / 57.12,
                                                (255 - 123.675) / 58.395])
    (stop,) = reference_records(cfg, reference, [COCO / "000000000724.jpg"])
    assert [d.label for d in stop.detections] == ["stop sign"]
