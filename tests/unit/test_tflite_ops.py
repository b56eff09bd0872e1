"""The TFLite_Detection_PostProcess conversion extension on SSD MobileNet v1 COCO (the shared folder's).

The converted model must reproduce the reference TFLite interpreter (LiteRT) on real images, both
when the engine reads the .tflite directly and through `ovstream convert` to an IR; on crafted
inputs, the translation alone must settle ties as the TFLite kernel does.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from engine.core.errors import ModelError
from engine.model.prepare import read_model
from engine.model.tflite_ops import translate_detection_postprocess
from engine.tools.modeltools.metrics import box_iou
from tests.conftest import COCO, shared

DETECT = shared("models/ssd_mobilenet_v1_coco_quant/detect.tflite")
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
                                                     scores.reshape(-1)[:n], strict=True) if s >= min_score]


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
    from engine.tools.modeltools.convert import convert

    result = convert(DETECT, "ssd_test", tmp_path, registry=tmp_path / "models.toml")
    entry = result.entry                        # recognised as a TF OD API export
    assert entry["adapter"] == "tf_od_api" and entry["params"] == {"class_offset": 1}
    assert entry["preprocess"] == {"resize": "stretch", "color": "RGB", "mean": [0.0] * 3,
                                   "scale": [1.0] * 3}
    compiled = ov.Core().compile_model(str(result.xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    _check_against_reference(compiled)


def test_without_the_extension_openvino_cannot_read_it():
    """The reason the extension exists (if OpenVINO learns the op, this test says so)."""
    with pytest.raises(Exception, match="TFLite_Detection_PostProcess"):
        ov.Core().read_model(str(DETECT))
    assert read_model(ov.Core(), str(DETECT)) is not None
    with pytest.raises(ModelError, match="not found"):
        read_model(ov.Core(), str(DETECT.with_name("missing.tflite")))


class _Node:
    """Stands in for the frontend's NodeContext: the op's (dequantized) inputs and its custom options."""

    def __init__(self, inputs: list[ov.Output], options: dict) -> None:
        self.inputs, self.options = inputs, options

    def get_input(self, index: int) -> ov.Output:
        return self.inputs[index]

    def get_attribute(self, name: str, default_value: object = None) -> object:
        return self.options.get(name, default_value)


def _postprocess(encodings: np.ndarray, scores: np.ndarray, anchors: np.ndarray, **options) -> list[np.ndarray]:
    """The translation alone, compiled and run on float inputs (what the frontend hands it)."""
    params = [ops.parameter(list(a.shape), np.float32) for a in (encodings, scores)]
    node = _Node([params[0].output(0), params[1].output(0), ops.constant(anchors).output(0)], options)
    compiled = ov.Core().compile_model(ov.Model(translate_detection_postprocess(node), params), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled([encodings, scores])
    return [result[i] for i in range(4)]


def test_ties_fall_as_in_the_tflite_kernel():
    """Quantized scores tie often. The kernel takes the lowest of equally scored classes (ArgMax),
    keeps scores >= nms_score_threshold, suppresses only IoU > nms_iou_threshold and ranks equal
    scores by anchor (stable sort); OpenVINO's TopK and NonMaxSuppression left alone do otherwise."""
    anchors = np.array([[0.5, 0.5, 1, 1],          # (yc, xc, h, w): box (0, 0, 1, 1)
                        [0.5, 0.25, 1, 0.5],       # box (0, 0, 1, 0.5): IoU with the first exactly 0.5
                        [2.5, 2.5, 1, 1],          # apart from the others
                        [4.5, 4.5, 1, 1],
                        [6.5, 6.5, 1, 1]], np.float32)
    scores = np.full((1, 5, 17), 0.1, np.float32)  # column 0: background, then 16 classes
    scores[0, 0, [3, 5, 7, 12, 15]] = 0.8          # classes 2, 4, 6, 11, 14 tie
    scores[0, 1, 1:] = 0.6                         # all tie
    scores[0, 2, [2, 9]] = 0.25                    # exactly the score threshold
    scores[0, 3, 1:] = 0.2                         # below it
    scores[0, 4, [2, 3, 7, 8, 11, 13, 16]] = 0.6   # ties anchor 1's score: ranked after it
    boxes, classes, out_scores, count = _postprocess(
        np.zeros((1, 5, 4), np.float32), scores, anchors, max_detections=6, max_classes_per_detection=1,
        nms_score_threshold=0.25, nms_iou_threshold=0.5, num_classes=16, y_scale=10.0, x_scale=10.0,
        h_scale=5.0, w_scale=5.0)
    assert count.tolist() == [4.0]
    assert classes[0].tolist() == [2, 0, 1, 1, 0, 0]
    assert out_scores[0].tolist() == pytest.approx([0.8, 0.6, 0.6, 0.25, 0, 0])
    assert boxes[0, :4].tolist() == [[0, 0, 1, 1], [0, 0, 1, 0.5], [6, 6, 7, 7], [2, 2, 3, 3]]
    assert not boxes[0, 4:].any()
