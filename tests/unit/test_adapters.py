"""Output adapters: anchors, decoding and NMS against hand-made tensors, and the real face detector."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from engine.config import ADAPTERS, ModelConfig, load_registry, read_labels
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.model.adapters import adapter_classes, create_adapter
from engine.model.adapters.anchor_ssd import AnchorSSDAdapter, generate_anchors
from engine.model.adapters.classification import ClassificationAdapter
from engine.model.adapters.detection_output import DetectionOutputAdapter
from engine.model.adapters.tf_od_api import TFObjectDetectionAdapter
from tests.conftest import COCO, REPO

REGISTRY = load_registry()
COCO_LABELS = read_labels(REPO / "data" / "coco91_labels.tsv")
LETTERBOX = Geometry.plan(640, 480, 192, 192, "letterbox")   # scale 0.3, 24 rows of padding above and below
STRETCH = Geometry.plan(640, 480, 300, 300, "stretch")


def registry_model(name: str, **changes) -> ModelConfig:
    entry = REGISTRY[name]
    return ModelConfig(name=name, adapter=entry["adapter"], labels=entry["labels"],
                       params={**entry["params"], **changes.pop("params", {})}, **changes)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- anchor_ssd: anchors ------------------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("face_short", 896), ("face", 2304), ("person", 2254)])
def test_anchor_counts(name, count):
    assert len(AnchorSSDAdapter(registry_model(name)).anchors) == count


def test_anchor_centres():
    face = AnchorSSDAdapter(registry_model("face")).anchors          # one 48x48 grid, one anchor a cell
    assert face[0] == pytest.approx([0.5 / 48, 0.5 / 48, 1, 1])
    assert face[10 * 48 + 7] == pytest.approx([7.5 / 48, 10.5 / 48, 1, 1])
    short = AnchorSSDAdapter(registry_model("face_short")).anchors   # 16x16 x2, then 8x8 x6 (3 layers merged)
    assert short[0] == pytest.approx(short[1]) and short[0][:2] == pytest.approx([0.5 / 16, 0.5 / 16])
    assert short[2][:2] == pytest.approx([1.5 / 16, 0.5 / 16])
    assert short[512][:2] == pytest.approx([0.5 / 8, 0.5 / 8])
    assert short[517][:2] == pytest.approx(short[512][:2])
    assert short[512 + 6][:2] == pytest.approx([1.5 / 8, 0.5 / 8])
    person = AnchorSSDAdapter(registry_model("person")).anchors      # 28x28 x2, 14x14 x2, 7x7 x6
    assert person[1568][:2] == pytest.approx([0.5 / 14, 0.5 / 14])
    assert person[1960][:2] == pytest.approx([0.5 / 7, 0.5 / 7])
    assert person[-1][:2] == pytest.approx([6.5 / 7, 6.5 / 7])


def test_anchor_sizes_when_not_fixed():
    """mediapipe's scales: linear from min to max over the layers, plus sqrt(s_i * s_i+1) interpolated."""
    anchors = generate_anchors({"strides": [8, 16], "num_layers": 2, "min_scale": 0.2, "max_scale": 0.8,
                                "anchor_offset_x": 0.5, "anchor_offset_y": 0.5, "aspect_ratios": [1.0, 4.0],
                                "interpolated_scale_aspect_ratio": 1.0, "fixed_anchor_size": False,
                                "box_scale": 64.0})
    assert len(anchors) == 8 * 8 * 3 + 4 * 4 * 3
    assert anchors[:3, 2:] == pytest.approx(np.array([[0.2, 0.2], [0.4, 0.1], [0.4, 0.4]]))  # sqrt(0.2*0.8)
    last_layer = np.array([[0.8, 0.8], [1.6, 0.4], [0.8944, 0.8944]])             # sqrt(0.8 * 1.0)
    assert anchors[192:195, 2:] == pytest.approx(last_layer, abs=1e-4)


# ---- anchor_ssd: outputs and decoding -----------------------------------------------------------

def face_outputs(cells: dict[tuple[int, int], tuple[float, list[float]]]) -> dict[str, np.ndarray]:
    """Face-model outputs: ``{(row, col): (logit, regressor values)}`` on the 48x48 grid, -10 elsewhere."""
    reg = np.zeros((1, 2304, 16), np.float32)
    cls = np.full((1, 2304, 1), -10.0, np.float32)
    for (row, col), (logit, values) in cells.items():
        cls[0, row * 48 + col, 0] = logit
        reg[0, row * 48 + col, :len(values)] = values
    return {"Identity": reg, "Identity_1": cls}   # names never matter, shapes do


def test_check_outputs_by_shape_with_one_line_errors():
    adapter = AnchorSSDAdapter(registry_model("face"))
    adapter.check_outputs({"b": [1, 2304, 1], "a": [1, 2304, 16]})
    with pytest.raises(ModelError, match="^model has 2016 anchors but params generate 2304$"):
        adapter.check_outputs({"regressors": [1, 2016, 16], "classificators": [1, 2016, 1]})
    with pytest.raises(ModelError, match="18 values per anchor"):
        adapter.check_outputs({"regressors": [1, 2304, 18], "classificators": [1, 2304, 1]})
    with pytest.raises(ModelError, match=r"expects regressors .* model outputs: out \[1, 1000\]"):
        adapter.check_outputs({"out": [1, 1000]})


def test_params_are_checked():
    with pytest.raises(ModelError, match="unknown key 'min_scroe' \\(did you mean 'min_score'\\?\\)"):
        AnchorSSDAdapter(registry_model("face", params={"min_scroe": 0.5}))
    with pytest.raises(ModelError, match="'strides' must be like"):
        AnchorSSDAdapter(registry_model("face", params={"strides": ["4"]}))
    with pytest.raises(ModelError, match="missing box_scale"):
        AnchorSSDAdapter(ModelConfig(name="x", params={"strides": [8], "min_scale": 0.1, "max_scale": 0.7}))
    with pytest.raises(ModelError, match="num_layers is 2 but 1 strides"):
        AnchorSSDAdapter(registry_model("face", params={"num_layers": 2}))
    engine_keys = {"layout": "NHWC", "input_size": [192, 192]}       # read by engine/model/prepare.py
    assert "layout" not in AnchorSSDAdapter(registry_model("face", params=engine_keys)).params


def test_decode_one_face_into_letterboxed_frame_pixels():
    """Anchor (row 20, col 30) has centre (30.5/48, 20.5/48) = model pixels (122, 82). Regressors in
    model pixels: centre moved by (+9.6, -4.8), size 38.4 x 48 → model box x 112.4..150.8, y 53.2..101.2.
    The 640x480 frame sits in the 192x192 input at scale 0.3 below 24 rows of padding: frame x = mx / 0.3,
    y = (my - 24) / 0.3."""
    adapter = AnchorSSDAdapter(registry_model("face"))
    values = [9.6, -4.8, 38.4, 48.0, 0.0, 0.0, 19.2, 9.6]   # box; keypoint 0 at the anchor; keypoint 1
    (face,) = adapter.decode(face_outputs({(20, 30): (5.0, values)}), LETTERBOX)
    assert face.label == "face" and face.class_id == 0
    assert face.score == pytest.approx(sigmoid(5.0), rel=1e-6)
    assert face.box == pytest.approx([374.667, 97.333, 502.667, 257.333], abs=1e-2)
    assert len(face.keypoints) == 6
    assert face.keypoints[0] == pytest.approx([122 / 0.3, (82 - 24) / 0.3], abs=1e-2)
    assert face.keypoints[1] == pytest.approx([(122 + 19.2) / 0.3, (82 + 9.6 - 24) / 0.3], abs=1e-2)


def test_decode_threshold_and_score_clipping():
    outputs = face_outputs({(5, 5): (0.3, [0, 0, 20, 20]),         # 0.574 < min_score 0.6
                            (20, 20): (4.0, [0, 0, 20, 20]),       # 0.982
                            (40, 40): (1e4, [0, 0, 20, 20])})      # clipped to 100: score 1.0, no overflow
    with np.errstate(all="raise"):
        scores = [d.score for d in AnchorSSDAdapter(registry_model("face")).decode(outputs, LETTERBOX)]
    assert scores == pytest.approx([1.0, sigmoid(4.0)])
    strict = AnchorSSDAdapter(registry_model("face", score_threshold=0.99))
    assert [d.score for d in strict.decode(outputs, LETTERBOX)] == pytest.approx([1.0])
    lenient = AnchorSSDAdapter(registry_model("face", params={"min_score": 0.5}))
    assert len(lenient.decode(outputs, LETTERBOX)) == 3


def test_weighted_nms_merges_overlaps_and_keeps_separate_boxes():
    """Cells (20, 30) and (20, 31) are 4 model pixels apart: 38.4-pixel boxes overlap at IoU 0.81 and
    merge into their score-weighted mean with the best score. (20, 36) is 24 pixels off (IoU 0.23 < 0.3)
    and (5, 5) far away: both stay."""
    size = [0.0, 0.0, 38.4, 38.4]
    outputs = face_outputs({(20, 30): (3.0, size + [0, 0]), (20, 31): (1.0, size + [4.0, 0]),
                            (20, 36): (2.0, size), (5, 5): (1.5, size)})
    detections = AnchorSSDAdapter(registry_model("face")).decode(outputs, LETTERBOX)
    assert [d.score for d in detections] == pytest.approx([sigmoid(3), sigmoid(2), sigmoid(1.5)])
    merged = detections[0]
    w1, w2 = sigmoid(3), sigmoid(1)
    cx = (122 * w1 + 126 * w2) / (w1 + w2)                          # model pixels
    assert merged.box == pytest.approx([(cx - 19.2) / 0.3, (82 - 19.2 - 24) / 0.3,
                                           (cx + 19.2) / 0.3, (82 + 19.2 - 24) / 0.3], abs=1e-2)
    kx = (122 * w1 + 130 * w2) / (w1 + w2)        # keypoint 0: the anchor centre, +4 px on the second
    assert merged.keypoints[0] == pytest.approx([kx / 0.3, (82 - 24) / 0.3], abs=1e-2)
    assert detections[1].box[0] == pytest.approx((146 - 19.2) / 0.3, abs=1e-2)


# ---- anchor_ssd: the real BlazeFace full-range model ------------------------------------------------

@pytest.fixture(scope="module")
def face_model():
    ov = pytest.importorskip("openvino")
    return ov.Core().compile_model(REPO / "models" / REGISTRY["face"]["file"], "CPU")


def detect_faces(face_model, image: str) -> list[dict]:
    """As the engine feeds it: BGR uint8 → letterbox into 192x192 → RGB, (x - 127.5) / 127.5, NHWC."""
    frame = cv2.imread(str(COCO / image))
    geometry = Geometry.plan(frame.shape[1], frame.shape[0], 192, 192, "letterbox")
    canvas = np.empty((192, 192, 3), np.uint8)
    geometry.resize_into(frame, canvas)
    tensor = ((canvas[..., ::-1].astype(np.float32) - 127.5) / 127.5)[None]
    adapter = AnchorSSDAdapter(registry_model("face"))
    adapter.check_outputs({out.get_any_name(): list(out.get_shape()) for out in face_model.outputs})
    results = face_model(tensor)
    return adapter.decode({out.get_any_name(): results[out] for out in face_model.outputs}, geometry)


@pytest.mark.parametrize("image, centre, side, eyes_y", [
    ("000000009378.jpg", (391, 117), (55, 95), (85, 120)),    # 600x400, padded above and below: frisbee
    ("000000001296.jpg", (237, 203), (140, 220), (160, 190)),  # 427x640, padded left and right: woman, phone
])
def test_real_face_detector_finds_the_face(face_model, image, centre, side, eyes_y):
    """Boxes checked by eye on the drawn image; the eyes (keypoints 0 and 1) sit in the upper half."""
    faces = detect_faces(face_model, image)
    assert len(faces) == 1 and faces[0].score > 0.8
    x1, y1, x2, y2 = faces[0].box
    assert abs((x1 + x2) / 2 - centre[0]) < 12 and abs((y1 + y2) / 2 - centre[1]) < 12
    assert side[0] < x2 - x1 < side[1] and side[0] < y2 - y1 < side[1]
    for x, y in faces[0].keypoints[:2]:
        assert x1 < x < x2 and eyes_y[0] < y < eyes_y[1]


# ---- ssd_detection_output -----------------------------------------------------------------------

def detection_output_model(**changes) -> ModelConfig:
    return ModelConfig(name="ssd", adapter="ssd_detection_output", labels=COCO_LABELS, **changes)


def test_detection_output_terminator_threshold_and_labels():
    rows = np.array([[0, 1, 0.9, 0.1, 0.2, 0.5, 0.6],
                     [0, 3, 0.4, 0.0, 0.0, 0.1, 0.1],              # below the default 0.5
                     [0, 18, 0.7, 0.5, 0.5, 1.2, 1.0],             # runs off the frame: clipped
                     [-1, 0, 0, 0, 0, 0, 0],                       # the terminator
                     [0, 1, 0.99, 0.1, 0.1, 0.2, 0.2]], np.float32)  # garbage after it
    outputs = {"aux": np.zeros((1, 10), np.float32), "detection_out": rows[None, None]}
    adapter = DetectionOutputAdapter(detection_output_model())
    adapter.check_outputs({name: list(a.shape) for name, a in outputs.items()})
    person, dog = adapter.decode(outputs, STRETCH)
    assert (person.label, person.class_id, dog.label, dog.class_id) == ("person", 1, "dog", 18)
    assert person.score == pytest.approx(0.9)
    assert person.box == pytest.approx([64, 96, 320, 288])
    assert dog.box == pytest.approx([320, 240, 640, 480])
    lenient = DetectionOutputAdapter(detection_output_model(score_threshold=0.3))
    assert [d.label for d in lenient.decode(outputs, STRETCH)] == ["person", "car", "dog"]
    strict = DetectionOutputAdapter(detection_output_model(params={"min_score": 0.8}))
    assert [d.label for d in strict.decode(outputs, STRETCH)] == ["person"]
    with pytest.raises(ModelError, match=r"expects an output \[1,1,N,7\]"):
        adapter.check_outputs({"out": [1, 100, 6]})


# ---- tf_od_api ----------------------------------------------------------------------------------

def tf_outputs(names: list[str]) -> dict[str, np.ndarray]:
    """boxes, classes, scores, count under ``names``; the third detection lies past num_detections."""
    boxes = np.array([[[0.25, 0.1, 0.75, 0.5], [0.0, 0.5, 0.5, 1.0], [0, 0, 1, 1], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[1.0, 18.0, 3.0, 1.0]], np.float32)
    scores = np.array([[0.92, 0.61, 0.9, 0.0]], np.float32)
    return dict(zip(names, [boxes, classes, scores, np.array([2.0], np.float32)], strict=True))


@pytest.mark.parametrize("names, reverse", [
    (["detection_boxes:0", "detection_classes:0", "detection_scores:0", "num_detections:0"], False),
    (["StatefulPartitionedCall:1", "StatefulPartitionedCall:2", "StatefulPartitionedCall:4", "Id"], False),
    (["StatefulPartitionedCall:1", "StatefulPartitionedCall:2", "StatefulPartitionedCall:4", "Id"], True),
])
def test_tf_od_api_by_name_or_shape(names, reverse):
    """Unhelpful names fall back to shapes; the scores [1, N] are told from the classes whatever the order."""
    outputs = tf_outputs(names)
    if reverse:
        outputs = dict(reversed(outputs.items()))
    adapter = TFObjectDetectionAdapter(ModelConfig(name="tf", adapter="tf_od_api", labels=COCO_LABELS))
    adapter.check_outputs({name: list(a.shape) for name, a in outputs.items()})
    person, dog = adapter.decode(outputs, STRETCH)
    assert (person.label, person.class_id, dog.label, dog.class_id) == ("person", 1, "dog", 18)
    assert person.score == pytest.approx(0.92)
    assert person.box == pytest.approx([64, 120, 320, 360])     # (ymin, xmin) → (x1, y1)
    assert dog.box == pytest.approx([320, 0, 640, 240])


def test_tf_od_api_ignores_raw_outputs_and_rejects_unknown_layouts():
    outputs = tf_outputs(["detection_boxes", "detection_classes", "detection_scores", "num_detections"])
    outputs["raw_detection_boxes"] = np.zeros((1, 1917, 4), np.float32)
    outputs["raw_detection_scores"] = np.zeros((1, 1917, 91), np.float32)
    adapter = TFObjectDetectionAdapter(ModelConfig(name="tf", adapter="tf_od_api", labels=COCO_LABELS,
                                                   score_threshold=0.6))
    assert [d.label for d in adapter.decode(outputs, STRETCH)] == ["person", "dog"]
    with pytest.raises(ModelError, match="tf_od_api expects detection_boxes"):
        adapter.check_outputs({"out": [1, 100, 7]})


# ---- classification -----------------------------------------------------------------------------

def classifier(labels: list[str], **changes) -> ClassificationAdapter:
    return ClassificationAdapter(ModelConfig(name="cls", adapter="classification", labels=labels, **changes))


def test_classification_softmax_and_top_k():
    logits = np.array([[2.0, -1.0, 0.5, 3.0]], np.float32)
    top = classifier(list("abcd"), top_k=2).decode({"logits": logits}, STRETCH)
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert [(c.label, c.class_id) for c in top] == [("d", 3), ("a", 0)]
    assert [c.score for c in top] == pytest.approx([expected[3], expected[0]], rel=1e-6)


def test_classification_keeps_probabilities_and_takes_nchw_shapes():
    probs = np.array([0.1, 0.6, 0.3], np.float32).reshape(1, 3, 1, 1)
    adapter = classifier(["cat", "dog", "fox"], top_k=5)
    adapter.check_outputs({"prob": [1, 3, 1, 1]})
    assert [(c.label, round(c.score, 6)) for c in adapter.decode({"prob": probs}, STRETCH)] == \
        [("dog", 0.6), ("fox", 0.3), ("cat", 0.1)]
    with pytest.raises(ModelError, match=r"classification expects one output \[1,C\]"):
        adapter.check_outputs({"feature_map": [1, 3, 224, 224]})


def test_classification_label_offset_skips_background():
    probs = np.array([[0.5, 0.1, 0.4]], np.float32)                 # index 0 is background
    top = classifier(["cat", "dog"], top_k=3, params={"label_offset": 1}).decode({"prob": probs}, STRETCH)
    assert [(c.label, c.class_id) for c in top] == [("dog", 1), ("cat", 0)]
    assert [c.score for c in top] == pytest.approx([0.4, 0.1])


def test_create_adapter_by_name():
    assert isinstance(create_adapter(registry_model("face")), AnchorSSDAdapter)
    assert isinstance(create_adapter(detection_output_model()), DetectionOutputAdapter)
    with pytest.raises(ModelError, match="unknown adapter 'yolo9000'"):
        create_adapter(ModelConfig(adapter="yolo9000"))


def test_every_listed_adapter_name_has_one_class_and_no_class_has_another():
    classes = adapter_classes()
    assert sorted(classes) == sorted(ADAPTERS)
    assert all(cls.name == name for name, cls in classes.items())
    assert classes["classification"].kind == "classification"
    assert {cls.kind for name, cls in classes.items() if name != "classification"} == {"detection"}
    with pytest.raises(TypeError, match="'yolo9000' is not one of engine.config.ADAPTERS"):
        type("Yolo9000Adapter", (AnchorSSDAdapter,), {"name": "yolo9000"})
    with pytest.raises(TypeError, match="'yolo' is declared by both"):
        type("AnotherYolo", (AnchorSSDAdapter,), {"name": "yolo"})
    assert type("Tuned", (AnchorSSDAdapter,), {}).name == "anchor_ssd"   # no name of its own: not registered
    assert adapter_classes()["anchor_ssd"] is AnchorSSDAdapter
