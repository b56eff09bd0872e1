"""The TFLite_Detection_PostProcess conversion extension on the shipped SSD MobileNet v1 COCO.

The converted model must reproduce the reference TFLite interpreter (LiteRT) on real images, both
when the engine reads the .tflite directly and through `ovstream convert` to an IR.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from engine.errors import ModelError
from engine.model import read_model
from engine.modeltools.metrics import box_iou
from tests.conftest import COCO, REPO

DETECT = REPO / "models" / "ssd_mobilenet_v1_coco" / "detect.tflite"
IMAGES = ("000000000285.jpg", "000000000724.jpg", "000000000139.jpg", "000000000802.jpg")


def _litert():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("ai-edge-litert is not installed here (pip install -e '.[tools]'); CI installs it")
    interpreter = Interpreter(model_path=str(DETECT))
    interpreter.allocate_tensors()
    return interpreter


def _pixels(name: str) -> np.ndarray:
    """The engine's input for this image: RGB, stretched to 300x300, uint8 NHWC."""
    frame = cv2.imread(str(COCO / name))[:, :, ::-1]
    return np.ascontiguousarray(cv2.resize(frame, (300, 300), interpolation=cv2.INTER_AREA)[None])


def _detections(boxes, classes, scores, count, min_score: float = 0.3) -> list[tuple[int, float, np.ndarray]]:
    n = int(count.reshape(-1)[0])
    return [(int(c), float(s), b) for b, c, s in zip(boxes.reshape(-1, 4)[:n], classes.reshape(-1)[:n],
                                                     scores.reshape(-1)[:n]) if s >= min_score]


def _check_against_reference(compiled: ov.CompiledModel) -> None:
    interpreter = _litert()
    outputs = interpreter.get_output_details()
    total = reproduced = 0
    for name in IMAGES:
        pixels = _pixels(name)
        engine = compiled(pixels)
        got = _detections(*(engine[i] for i in range(4)))
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
        interpreter.invoke()
        want = _detections(*(interpreter.get_tensor(d["index"]) for d in outputs))
        assert want, name
        for cls, score, box in want:
            total += 1
            reproduced += any(c == cls and abs(s - score) <= 0.05 and box_iou(b.tolist(), box.tolist()) >= 0.9
                              for c, s, b in got)
    assert reproduced >= 0.9 * total, f"{reproduced} of {total} reference detections reproduced"


def test_engine_reads_detect_tflite_through_the_extension():
    model = read_model(ov.Core(), str(DETECT))
    shapes = {port.get_any_name(): [d.get_length() for d in port.get_partial_shape()] for port in model.outputs}
    assert shapes == {"TFLite_Detection_PostProcess": [1, 10, 4], "TFLite_Detection_PostProcess:1": [1, 10],
                      "TFLite_Detection_PostProcess:2": [1, 10], "TFLite_Detection_PostProcess:3": [1]}
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    boxes, classes, scores, count = (compiled(_pixels("000000000285.jpg"))[i] for i in range(4))
    assert classes[0, 0] == 22 and scores[0, 0] > 0.7           # a bear: COCO id 23, 0-based 22
    assert np.all(np.diff(scores[0, :int(count[0])]) <= 0)      # best first
    assert np.all(scores[0, int(count[0]):] == 0)               # rows past the count are zero
    _check_against_reference(compiled)


def test_convert_writes_an_ir_that_matches_the_reference(tmp_path: Path):
    from engine.modeltools.convert import convert

    result = convert(DETECT, "ssd_test", tmp_path, registry=tmp_path / "models.toml")
    entry = result.entry                        # recognised as a TF OD API export
    assert entry["adapter"] == "tf_od_api" and entry["params"] == {"class_offset": 1}
    assert entry["preprocess"] == {"resize": "stretch", "color": "RGB", "mean": [0.0] * 3, "scale": [1.0] * 3}
    compiled = ov.Core().compile_model(str(result.xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    _check_against_reference(compiled)


def test_without_the_extension_openvino_cannot_read_it():
    """The reason the extension exists (if OpenVINO learns the op, this test says so)."""
    with pytest.raises(Exception, match="TFLite_Detection_PostProcess"):
        ov.Core().read_model(str(DETECT))
    assert read_model(ov.Core(), str(DETECT)) is not None
    with pytest.raises(ModelError, match="not found"):
        read_model(ov.Core(), str(DETECT.with_name("missing.tflite")))
