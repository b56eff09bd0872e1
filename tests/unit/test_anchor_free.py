"""The anchor-free adapters: NanoDet and YOLOX on the real models, YOLO v5 / v8 on graphs built here,
YOLOX's grid/stride decoding on synthetic outputs."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from engine.config import ModelConfig, PreprocessConfig, RunConfig, resolve_model
from engine.core.errors import ModelError
from engine.core.geometry import Geometry
from engine.model.adapters import create_adapter
from engine.model.adapters.yolox import grid
from engine.model.prepare import output_shapes, prepare_model, read_model
from tests.conftest import COCO


def run_frame(cfg: ModelConfig, frame: np.ndarray) -> list[dict]:
    """One frame as the engine runs it: resize plan, PrePostProcessor-prepared model, the adapter."""
    core = ov.Core()
    model, info = prepare_model(read_model(core, cfg.path), cfg, batch=1)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    adapter = create_adapter(cfg)
    adapter.check_outputs(output_shapes(compiled))
    pre = cfg.preprocess
    geometry = Geometry.plan(frame.shape[1], frame.shape[0], info.width, info.height, pre.resize, pre.crop)
    pixels = np.zeros((1, info.height, info.width, 3), np.uint8)
    geometry.resize_into(frame, pixels[0], pre.interpolation, pre.pad)
    result = compiled(pixels)
    outputs = {name: result[i] for i, name in enumerate(output_shapes(compiled))}
    return adapter.decode(outputs, geometry)


def registered(name: str) -> ModelConfig:
    return resolve_model(RunConfig.from_dict({"model": {"name": name}})).model


# ---- NanoDet -------------------------------------------------------------------------------------

def test_nanodet_finds_coco_objects_on_the_real_model():
    cfg = registered("nanodet_m")
    stop = run_frame(cfg, cv2.imread(str(COCO / "000000000724.jpg")))
    assert [d.label for d in stop] == ["stop sign"] and stop[0].score > 0.8
    x1, y1, x2, y2 = stop[0].box                       # the sign near [123, 72, 257, 226]
    assert abs((x1 + x2) / 2 - 190) < 15 and abs((y1 + y2) / 2 - 149) < 15
    kitchen = {d.label for d in run_frame(cfg, cv2.imread(str(COCO / "000000000802.jpg")))}
    assert {"refrigerator", "oven"} <= kitchen


def _gfl_outputs(classes: int = 3) -> dict[str, np.ndarray]:
    """A 64x64 input's GFL outputs (strides 8, 16, 32: 64, 16, 4 cells), names shuffled as the 320
    export's are; two boxes at stride 16, cell (x=1, y=2): class 2 (0.9) and class 1 (0.3, below
    the threshold); and a duplicate of the first at stride 8, a little weaker, that NMS removes."""
    outputs = {}
    for i, cells in enumerate((64, 16, 4)):
        outputs[f"cls_score{i}"] = np.zeros((1, cells, classes), np.float32)
        outputs[f"bbox_pred{(i + 1) % 3}"] = np.zeros((1, cells, 32), np.float32)

    def put(level: int, cell: int, distances: list[int]) -> None:
        bins = outputs[f"bbox_pred{(level + 1) % 3}"][0, cell].reshape(4, 8)
        bins[:] = -50.0
        bins[np.arange(4), distances] = 50.0                  # one-hot: distance = bin × stride

    outputs["cls_score1"][0, 2 * 4 + 1, 2] = 0.9
    put(1, 2 * 4 + 1, [1, 2, 1, 0])                            # l=16, t=32, r=16, b=0 around (23.5, 39.5)
    outputs["cls_score1"][0, 0, 1] = 0.3
    outputs["cls_score0"][0, 4 * 8 + 2, 2] = 0.8               # stride 8, cell (2, 4): centre (19.5, 35.5)
    put(0, 4 * 8 + 2, [2, 4, 3, 0])                            # → (3.5, 3.5, 43.5, 35.5): same box, ±4 px
    return outputs


def test_nanodet_gfl_decoding_and_nms():
    cfg = ModelConfig(name="n", adapter="nanodet", labels=["a", "b", "c"], params={"num_classes": 3})
    adapter = create_adapter(cfg)
    outputs = _gfl_outputs()
    adapter.check_outputs({name: list(a.shape) for name, a in outputs.items()})
    geometry = Geometry.plan(128, 128, 64, 64, "stretch")     # frame pixels = 2 × input pixels
    detections = adapter.decode(outputs, geometry)
    assert [(d.label, round(d.score, 2)) for d in detections] == [("c", 0.9)]
    assert detections[0].box == pytest.approx([2 * 7.5, 2 * 7.5, 2 * 39.5, 2 * 39.5], abs=1e-3)


def test_nanodet_outputs_that_do_not_pair_up():
    adapter = create_adapter(ModelConfig(name="n", adapter="nanodet", params={"num_classes": 80}))
    with pytest.raises(ModelError, match=r"class map \[1,N,80\] and a box map \[1,N,32\]"):
        adapter.check_outputs({"scores": [1, 2704, 80], "boxes": [1, 676, 32]})


# ---- YOLO ----------------------------------------------------------------------------------------

def _candidates(classes: int = 3) -> np.ndarray:
    """YOLOv8-style rows (cx, cy, w, h, class scores) on a 64x64 input: the same box twice for class 1
    (0.9, and 0.8 one pixel off: suppressed), once for class 2 (0.7: kept, NMS is per class), and a
    class 0 box below the threshold; 40 candidates in all (the rest empty), more than 4 + C as in
    real models."""
    rows = np.zeros((40, 4 + classes), np.float32)
    rows[0, :4], rows[0, 4 + 1] = (32, 32, 20, 10), 0.9
    rows[1, :4], rows[1, 4 + 1] = (33, 32, 20, 10), 0.8
    rows[2, :4], rows[2, 4 + 2] = (32, 32, 20, 10), 0.7
    rows[3, :4], rows[3, 4 + 0] = (10, 10, 4, 4), 0.1
    return rows


def yolo_graph(path: Path, layout: str) -> Path:
    """An IR whose output is fixed candidates in ``layout`` (v5: [1,N,5+C] with objectness; v8:
    [1,4+C,N]), plus 0 × the image so that the graph depends on its input as a real one does."""
    rows = _candidates()
    if layout == "v5":          # objectness 0.5 and doubled class scores: the same products
        rows = np.concatenate([rows[:, :4], np.full((len(rows), 1), 0.5, np.float32), rows[:, 4:] * 2], axis=1)
        table = rows[None]
    else:
        table = rows.T[None]
    image = ops.parameter([1, 3, 64, 64], np.float32, name="images")
    zero = ops.multiply(ops.reduce_mean(image, ops.constant(np.array([1, 2, 3], np.int64)), keep_dims=True),
                        ops.constant(np.float32(0)))
    out = ops.add(ops.constant(table), ops.reshape(zero, ops.constant(np.array([1, 1, 1], np.int64)), False))
    ov.save_model(ov.Model([out], [image], f"yolo_{layout}"), path)
    return path


@pytest.mark.parametrize("layout", ["v5", "v8"])
def test_yolo_layouts_on_a_letterboxed_frame(tmp_path: Path, layout: str):
    cfg = ModelConfig(name="y", path=str(yolo_graph(tmp_path / f"{layout}.xml", layout)), adapter="yolo",
                      labels=["a", "b", "c"], preprocess=PreprocessConfig(resize="letterbox", scale=[255.0] * 3))
    frame = np.zeros((64, 128, 3), np.uint8)                  # letterbox: scale 0.5, 16 px bars top and bottom
    detections = run_frame(cfg, frame)
    assert [(d.label, round(d.score, 2)) for d in detections] == [("b", 0.9), ("c", 0.7)]
    # input box (22, 27, 42, 37) → frame ((22 - 0) / 0.5, (27 - 16) / 0.5, ...)
    assert detections[0].box == pytest.approx([44, 22, 84, 42], abs=1e-3)


def test_yolo_agnostic_nms_and_forced_version():
    rows = _candidates()
    geometry = Geometry.plan(64, 64, 64, 64, "letterbox")
    agnostic = create_adapter(ModelConfig(name="y", adapter="yolo", params={"agnostic_nms": True}))
    assert [d.class_id for d in agnostic.decode({"out": rows.T[None]}, geometry)] == [1]
    forced = create_adapter(ModelConfig(name="y", adapter="yolo", params={"version": "v8"}))
    square = np.zeros((1, 7, 7), np.float32)                  # 7 candidates of 4 + 3: auto would say v5
    square[0, :, 0] = (32, 32, 20, 10, 0.0, 0.95, 0.0)
    assert [d.class_id for d in forced.decode({"out": square}, geometry)] == [1]
    with pytest.raises(ModelError, match="version must be one of"):
        create_adapter(ModelConfig(name="y", adapter="yolo", params={"version": "v7"}))
    with pytest.raises(ModelError, match=r"yolo expects one output \[1,N,5\+C\]"):
        agnostic.check_outputs({"boxes": [1, 100, 4], "scores": [1, 100, 80]})


# ---- YOLOX ---------------------------------------------------------------------------------------

def test_yolox_grid_is_strides_in_turn_row_major():
    cells, strides = grid(64, 32, [8, 16, 32])                 # 8x4 + 4x2 + 2x1 cells
    assert len(cells) == 32 + 8 + 2 and strides[:, 0].tolist() == [8] * 32 + [16] * 8 + [32] * 2
    assert cells[:9].tolist() == [[x, 0] for x in range(8)] + [[0, 1]]   # (col, row), rows of 8 at stride 8
    assert cells[32 + 5].tolist() == [1, 1] and cells[-1].tolist() == [1, 0]


def _yolox_rows(classes: int = 3) -> np.ndarray:
    """Raw YOLOX rows of a 64x64 input (strides 8, 16, 32: 64 + 16 + 4 = 84 cells): at stride 16,
    cell (col 1, row 2), offset (0.5, 0.25) and log size (log 2, 0) → centre (24, 36), size 32x16,
    objectness 0.9 × class 2 score 0.8; the same box at stride 8 (cell (3, 4), offset (0, 0.5),
    size 4x2 cells) a little weaker (suppressed), and as class 1 (kept: NMS is per class); a
    candidate below the threshold (0.5 × 0.5)."""
    rows = np.zeros((84, 5 + classes), np.float32)
    rows[64 + 2 * 4 + 1, :5], rows[64 + 2 * 4 + 1, 5 + 2] = (0.5, 0.25, np.log(2), 0.0, 0.9), 0.8
    rows[4 * 8 + 3, :5], rows[4 * 8 + 3, 5 + 2] = (0.0, 0.5, np.log(4), np.log(2), 0.9), 0.7
    rows[4 * 8 + 4, :5], rows[4 * 8 + 4, 5 + 1] = (-1.0, 0.5, np.log(4), np.log(2), 0.8), 0.5
    rows[0, :5], rows[0, 5 + 0] = (0.5, 0.5, 0.0, 0.0, 0.5), 0.5
    return rows[None]


def test_yolox_grid_stride_decoding_and_class_nms():
    adapter = create_adapter(ModelConfig(name="x", adapter="yolox", labels=["a", "b", "c"],
                                         params={"num_classes": 3}))
    adapter.check_outputs({"output": [1, 84, 8]})
    found = adapter.decode({"output": _yolox_rows()}, Geometry.plan(64, 64, 64, 64, "letterbox_topleft"))
    assert [(d.label, round(d.score, 3)) for d in found] == [("c", 0.72), ("b", 0.4)]
    assert found[0].box == pytest.approx([8, 28, 40, 44], abs=1e-4)
    assert found[1].box == pytest.approx([8, 28, 40, 44], abs=1e-4)


def test_yolox_boxes_map_back_through_the_top_left_letterbox():
    adapter = create_adapter(ModelConfig(name="x", adapter="yolox", params={"num_classes": 3}))
    geometry = Geometry.plan(256, 128, 64, 64, "letterbox_topleft")    # scale 0.25, image in rows 0..31
    (best, _) = adapter.decode({"output": _yolox_rows()}, geometry)
    assert best.box == pytest.approx([32, 112, 160, 128], abs=1e-3)    # [8, 28, 40, 44] / 0.25, y clipped at 128


def test_yolox_outputs_that_do_not_fit():
    adapter = create_adapter(ModelConfig(name="x", adapter="yolox"))
    with pytest.raises(ModelError, match=r"one output \[1,N,85\]"):
        adapter.check_outputs({"output": [1, 3549, 8]})
    with pytest.raises(ModelError, match="strides .* give 3549 cells on a 416x416 input"):
        adapter.decode({"output": np.zeros((1, 100, 85), np.float32)}, Geometry.plan(416, 416, 416, 416, "stretch"))


@pytest.mark.skipif(not (COCO / "000000000724.jpg").is_file(), reason="the shared COCO images are not here")
def test_yolox_nano_finds_coco_objects_on_the_real_model():
    try:
        cfg = registered("yolox_nano")
    except Exception as exc:                 # the model file lives in the shared folder, not the repository
        pytest.skip(f"yolox_nano is not in the model search path: {exc}")
    stop = run_frame(cfg, cv2.imread(str(COCO / "000000000724.jpg")))
    assert stop[0].label == "stop sign" and stop[0].score > 0.9
    x1, y1, x2, y2 = stop[0].box                       # the sign near [123, 72, 257, 226]
    assert abs((x1 + x2) / 2 - 190) < 15 and abs((y1 + y2) / 2 - 149) < 15
    bear = run_frame(cfg, cv2.imread(str(COCO / "000000000285.jpg")))
    assert bear[0].label == "bear" and bear[0].score > 0.85
