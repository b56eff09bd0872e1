"""engine/model/detect.py and `--model FILE` resolution: a model file's adapter from its registry entry
(same path or same bytes) or from its outputs, else one line asking for --adapter."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.config import find_model_file, load_config
from engine.core.errors import ModelError
from engine.model.detect import ImageInput, Output, detect, detect_model, grid_cells
from tests.conftest import REPO

FACE_SHORT = REPO / "models" / "mediapipe" / "face_detection_short_range.tflite"


def outs(*specs: tuple[str, list[int]]) -> list[Output]:
    return [Output((name,), tuple(shape)) for name, shape in specs]


@pytest.mark.parametrize("outputs, image, adapter, extra", [
    (outs(("detection_boxes:0", [1, 100, 4]), ("detection_scores:0", [1, 100]),
          ("detection_classes:0", [1, 100]), ("num_detections:0", [1])),
     ImageInput(300, 300, 3, uint8=True), "tf_od_api", {"mean": [0.0] * 3, "resize": "stretch"}),
    (outs(("TFLite_Detection_PostProcess", [1, 10, 4]), ("TFLite_Detection_PostProcess:1", [1, 10]),
          ("TFLite_Detection_PostProcess:2", [1, 10]), ("TFLite_Detection_PostProcess:3", [1])),
     ImageInput(300, 300, 3, uint8=False), "tf_od_api", {"mean": [127.5] * 3, "class_offset": 1}),
    (outs(("detection_out", [1, 1, 100, 7])), ImageInput(300, 300), "ssd_detection_output", {"color": "BGR"}),
    (outs(("output", [1, 3549, 85])), ImageInput(416, 416), "yolox", {"color": "BGR", "pad": 114}),
    (outs(("output0", [1, 25200, 85])), ImageInput(640, 640), "yolo", {"version": "v5", "scale": [255.0] * 3}),
    (outs(("output0", [1, 84, 8400])), ImageInput(640, 640), "yolo", {"version": "v8", "resize": "letterbox"}),
    (outs(("logits", [1, 1000])), ImageInput(224, 224), "classification", {}),
    (outs(("prob", [1, 10, 1, 1])), ImageInput(28, 28, 1), "classification", {"color": "GRAY", "mean": [0.0]}),
], ids=["od-api", "tflite-postprocess", "detection-output", "yolox", "yolov5", "yolov8", "classifier",
        "gray-classifier"])
def test_layouts_that_tell_their_adapter(outputs, image, adapter, extra):
    found = detect(outputs, image)
    assert found is not None and found.adapter == adapter, found
    entry = found.entry(image)
    flat = {**entry["preprocess"], **entry["params"]}
    for key, value in extra.items():
        if key == "pad" and "pad" not in flat:      # a preprocess key of the yolox work; absent before it
            continue
        assert flat[key] == value, (key, flat)


@pytest.mark.parametrize("outputs, image", [
    (outs(("regressors", [1, 896, 16]), ("classificators", [1, 896, 1])), ImageInput(128, 128)),   # anchor SSD
    (outs(("output0", [1, 84, 8400])), ImageInput()),          # a dynamic input: no grid to check against
    (outs(("output0", [1, 1000, 85])), ImageInput(640, 640)),  # N fits no grid
    (outs(("a", [1, 10]), ("b", [1, 10])), ImageInput(32, 32)),  # two classifier-like outputs
    (outs(("raw_detection_boxes", [1, 1917, 4]), ("raw_detection_scores", [1, 1917, 91])), ImageInput(300, 300)),
], ids=["anchor-ssd", "dynamic", "no-grid", "two-outputs", "raw-boxes"])
def test_ambiguous_layouts_are_not_guessed(outputs, image):
    assert detect(outputs, image) is None


def test_grid_cells():
    assert grid_cells(416, 416) == 52 * 52 + 26 * 26 + 13 * 13 == 3549
    assert grid_cells(640, 640) == 8400 and grid_cells(0, 640) == 0


# ---- with real files ------------------------------------------------------------------------------------

def _onnx(path: Path, outputs: dict[str, list[int]]) -> Path:
    """An ONNX model of a [1,3,32,32] input whose outputs have the given shapes (pool, reshape, scale)."""
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[tools]')")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, values = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"])], [], []
    for i, (name, shape) in enumerate(outputs.items()):
        size = int(np.prod(shape))
        inits += [numpy_helper.from_array(np.linspace(-1, 1, 3 * size, dtype=np.float32).reshape(3, size), f"w{i}"),
                  numpy_helper.from_array(np.array(shape, np.int64), f"s{i}")]
        nodes += [helper.make_node("Flatten", ["pooled"], [f"f{i}"]),
                  helper.make_node("MatMul", [f"f{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Reshape", [f"m{i}", f"s{i}"], [name])]
        values.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "made", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              values, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnx_classifier_made_here_is_detected_as_one(tmp_path):
    path = _onnx(tmp_path / "net.onnx", {"scores": [1, 7]})
    entry = detect_model(path)
    assert entry["adapter"] == "classification" and "[1, 7]" in entry["description"]
    model = load_config(None, {"model": {"path": str(path)}}, detect=detect_model).model
    assert (model.name, model.adapter, model.preprocess.color) == ("net", "classification", "RGB")


def test_unknown_layout_is_one_line_with_its_outputs(tmp_path):
    path = _onnx(tmp_path / "odd.onnx", {"feat": [1, 4, 6, 6], "extra": [1, 12, 5]})
    with pytest.raises(ModelError) as err:
        load_config(None, {"model": {"path": str(path)}}, detect=detect_model)
    line = str(err.value)
    assert "\n" not in line and "--adapter" in line and str(path) in line
    assert "feat [1, 4, 6, 6]" in line and "extra [1, 12, 5]" in line, line


def test_the_file_of_a_registry_entry_takes_that_entry(tmp_path):
    """`--model models/…/face_detection_short_range.tflite`: the face_short entry, not the default
    model's (once: a tf_od_api shape message); a copy elsewhere is found by its sha256."""
    model = load_config(None, {"model": {"path": str(FACE_SHORT)}}).model       # no detector needed
    assert (model.name, model.adapter, model.labels) == ("face_short", "anchor_ssd", ["face"])
    assert model.params["box_scale"] == 128.0 and model.preprocess.mean == [127.5] * 3
    copy = shutil.copy(FACE_SHORT, tmp_path / "my_faces.tflite")
    assert find_model_file(Path(copy))[0] == "face_short"
    assert load_config(None, {"model": {"path": str(copy)}}).model.path == str(copy)


def test_an_explicit_adapter_and_a_named_model_still_win(tmp_path):
    copy = Path(shutil.copy(FACE_SHORT, tmp_path / "f.tflite"))
    copy.write_bytes(copy.read_bytes() + b"\0")         # another file: no registry entry
    model = load_config(None, {"model": {"path": str(copy), "adapter": "anchor_ssd"}}).model
    assert (model.name, model.adapter) == ("f", "anchor_ssd")
    named = load_config(None, {"model": {"name": "face", "path": str(copy)}}).model   # name + path: as before
    assert (named.name, named.params["box_scale"]) == ("face", 192.0)


def test_without_a_detector_an_unknown_file_asks_for_the_adapter(tmp_path):
    path = _onnx(tmp_path / "net.onnx", {"scores": [1, 7]})
    with pytest.raises(ModelError, match=r"give the model's output adapter \(--adapter"):
        load_config(None, {"model": {"path": str(path)}})
