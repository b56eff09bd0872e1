"""ovstream quantize: engine-faithful calibration data, NNCF INT8 agreement, registry entry, CLI errors."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from rich.console import Console

from engine.cli import main as cli
from engine.config import ModelConfig, PreprocessConfig
from engine.core.geometry import Geometry
from engine.tools.modeltools.datasets import InputPreparer, folder_samples, load_mnist
from tests.conftest import COCO, COCO_ANNOTATIONS, REPO

pytest.importorskip("nncf", reason="nncf not installed (pip install -e '.[tools]')")

from engine.config import tomllib  # the stdlib module, or tomli on Python 3.10
from engine.tools.modeltools.quantize import (  # noqa: E402
    GOOD_AP50_DROP,
    head_layers,
    infer_all,
    int8_entry,
    preset_for,
    quantize,
    report_table,
    resolve,
    throughput,
)

IMAGE = COCO / "000000000139.jpg"          # 640x426: letterbox pads top and bottom


def tiny_cnn(channels: int = 3, activation: Callable[[ov.Node], ov.Node] = ops.relu) -> ov.Model:
    """A seeded NCHW classifier: two 3x3 conv + ReLU (or ``activation``), global average pool, dense, softmax."""
    rng = np.random.default_rng(0)
    x = ops.parameter([1, channels, 32, 32], np.float32, name="x")
    w1 = ops.constant(rng.standard_normal((16, channels, 3, 3)).astype(np.float32) * 0.3)
    w2 = ops.constant(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.2)
    h = activation(ops.convolution(x, w1, [1, 1], [1, 1], [1, 1], [1, 1]))
    h = activation(ops.convolution(h, w2, [2, 2], [1, 1], [1, 1], [1, 1]))
    pooled = ops.reduce_mean(h, ops.constant(np.array([2, 3])), keep_dims=False)
    dense = ops.matmul(pooled, ops.constant(rng.standard_normal((16, 10)).astype(np.float32) * 2.0), False, False)
    return ov.Model([ops.softmax(dense, 1)], [x], "tiny_cnn")


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> ModelConfig:
    xml = tmp_path / "tiny.xml"
    ov.save_model(tiny_cnn(), xml, compress_to_fp16=False)
    return ModelConfig(name="tiny", path=str(xml), adapter="classification", labels=[str(i) for i in range(10)],
                       preprocess=PreprocessConfig(resize="stretch", color="RGB", mean=[127.5] * 3,
                                                   scale=[64.0] * 3))


# ---- data -------------------------------------------------------------------------------------------

def test_mnist_split_is_fixed_and_stratified() -> None:
    split = load_mnist()
    assert split.train_images.shape == (4000, 28, 28) and split.test_images.shape == (1000, 28, 28)
    assert np.bincount(split.train_labels).tolist() == [400] * 10
    assert np.bincount(split.test_labels).tolist() == [100] * 10
    again = load_mnist()
    assert np.array_equal(again.test_images, split.test_images)


def test_prepared_face_input_is_what_the_engine_feeds() -> None:
    """Letterbox into 192x192 (bilinear), BGR→RGB, (x - 127.5) / 127.5: computed by hand and compared."""
    face = resolve("face")
    model = ov.Core().read_model(face.path)
    frame = cv2.imread(str(IMAGE))
    sample = InputPreparer(model, face)(frame, str(IMAGE))
    geometry = Geometry.plan(frame.shape[1], frame.shape[0], 192, 192, "letterbox")
    assert sample.geometry == geometry and geometry.pad_y > 0
    pixels = np.zeros((192, 192, 3), np.uint8)
    geometry.resize_into(frame, pixels, "linear")    # the registry says so: trained on bilinear resizes
    expected = (pixels[..., ::-1].astype(np.float32) - 127.5) / 127.5
    assert sample.tensor.shape == (1, 192, 192, 3)
    np.testing.assert_allclose(sample.tensor[0], expected, atol=1e-6)


def test_prepared_nchw_and_gray_inputs(tiny_cfg: ModelConfig, tmp_path: Path) -> None:
    frame = cv2.imread(str(IMAGE))
    pixels = cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA)
    sample = InputPreparer(ov.Core().read_model(tiny_cfg.path), tiny_cfg)(frame, "x")
    expected = ((pixels[..., ::-1].astype(np.float32) - 127.5) / 64.0).transpose(2, 0, 1)
    np.testing.assert_allclose(sample.tensor[0], expected, atol=1e-5)

    gray_xml = tmp_path / "gray.xml"
    ov.save_model(tiny_cnn(channels=1), gray_xml)
    gray = ModelConfig(name="g", path=str(gray_xml), adapter="classification",
                       preprocess=PreprocessConfig(resize="stretch", color="GRAY", mean=[0.0], scale=[255.0]))
    sample = InputPreparer(ov.Core().read_model(gray_xml), gray)(frame, "x")
    assert sample.tensor.shape == (1, 1, 32, 32)
    expected = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY) / 255.0     # PPP's grey weights round differently
    np.testing.assert_allclose(sample.tensor[0, 0], expected, atol=1.5 / 255)


# ---- quantization -------------------------------------------------------------------------------------

def test_preset_auto_is_mixed_where_activations_go_negative() -> None:
    """SiLU (Swish) or PReLU outputs are signed: ``auto`` picks asymmetric activations (mixed) there,
    the symmetric performance preset after ReLU; a preset named by hand is kept."""
    assert preset_for(tiny_cnn(), "auto") == "performance"
    assert preset_for(tiny_cnn(activation=ops.swish), "auto") == "mixed"
    slope = ops.constant(np.full(16, 0.1, np.float32))
    assert preset_for(tiny_cnn(activation=lambda h: ops.prelu(h, slope)), "auto") == "mixed"
    assert preset_for(tiny_cnn(activation=ops.swish), "performance") == "performance"
    assert preset_for(tiny_cnn(), "mixed") == "mixed"


def test_int8_agrees_with_fp32(tiny_cfg: ModelConfig, tmp_path: Path) -> None:
    report = quantize(tiny_cfg, str(COCO), tmp_path / "int8" / "tiny_int8.xml", subset=32, seconds=0.3)
    assert report.xml and report.xml.is_file() and report.metric == "agreement"
    int8 = ov.Core().read_model(report.xml)
    assert sum(op.get_type_name() == "FakeQuantize" for op in int8.get_ordered_ops()) >= 3
    assert report.variants["FP32"].metric == 1.0
    assert report.variants["FP16"].metric >= 0.95
    assert report.variants["INT8"].metric >= 0.85            # top-1 agreement on the 32 images
    assert all(v.fps > 0 for v in report.variants.values()) and report.speedup > 0
    # and the class scores themselves stay close
    core = ov.Core()
    samples = folder_samples(COCO, InputPreparer(core.read_model(tiny_cfg.path), tiny_cfg, core), 32)
    props = {"INFERENCE_PRECISION_HINT": "f32"}
    fp32, q = (np.concatenate([next(iter(o.values()))
                               for o in infer_all(core.compile_model(m, "CPU", props), samples)])
               for m in (tiny_cfg.path, int8))
    assert np.abs(q - fp32).max() < 0.1


@pytest.mark.slow
def test_face_int8_from_coco(tmp_path: Path) -> None:
    """`ovstream quantize face --data data/coco100`, on a small subset: it runs, saves, and agrees."""
    report = quantize(resolve("face"), str(COCO), tmp_path / "face_int8.xml", subset=24, seconds=0.3)
    assert report.metric == "agreement_map" and report.xml.is_file()
    assert report.variants["FP16"].metric > 0.9
    assert report.variants["INT8"].metric > 0.3


def test_throughput_counts_frames(tiny_cfg: ModelConfig) -> None:
    core = ov.Core()
    model = core.read_model(tiny_cfg.path)
    samples = folder_samples(COCO, InputPreparer(model, tiny_cfg, core), 4)
    fps = throughput({"a": core.compile_model(model, "CPU")}, samples, seconds=0.2, rounds=2)
    assert fps["a"] > 10


def test_int8_entry_copies_the_source_settings(tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    shutil.copy(REPO / "models" / "models.toml", registry)
    entry = int8_entry(resolve("face"), tmp_path / "face_int8" / "face_int8.xml", registry)
    face = tomllib.loads(registry.read_text())["face"]
    assert entry["file"] == "face_int8/face_int8.xml"
    assert {k: entry[k] for k in ("adapter", "labels", "preprocess", "params")} == \
        {k: face[k] for k in ("adapter", "labels", "preprocess", "params")}


@pytest.mark.parametrize("argv, message", [
    (["face", "--subset", "0"], "--subset must be >= 1"),
    (["face", "--max-drop", "5"], "--max-drop"),
    (["no_such_model"], "not in"),
    (["face", "--metric", "top1", "--seconds", "0.1"], "--metric top1 needs labelled data"),
])
def test_cli_errors_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    assert cli(["quantize", *argv, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_accuracy_control_keeps_agreement(tiny_cfg: ModelConfig, tmp_path: Path) -> None:
    """nncf.quantize_with_accuracy_control with the agreement metric as validation function."""
    report = quantize(tiny_cfg, str(COCO), tmp_path / "tiny_int8.xml", subset=24, max_drop=0.05, seconds=0.2)
    assert report.xml.is_file() and report.variants["INT8"].metric >= 0.9


# COCO pictures whose one obvious object is an ImageNet class (label = the COCO annotation's object)
IMAGENET_LABELLED = {"000000000285.jpg": 294, "000000000724.jpg": 919, "000000000776.jpg": 850,
                     "000000001818.jpg": 340, "000000002149.jpg": 948, "000000003661.jpg": 954,
                     "000000005477.jpg": 404, "000000009448.jpg": 879}   # bear, street sign, teddy, zebra,
#                                                                          apple, banana, airliner, umbrella


@pytest.mark.slow
def test_classifier_int8_on_a_labelled_folder(tmp_path: Path) -> None:
    """`ovstream quantize efficientnet_lite0 --data DIR --labels-list val_list.txt`, on 8 images."""
    data = tmp_path / "labelled"
    (data / "pictures").mkdir(parents=True)
    for name in IMAGENET_LABELLED:
        shutil.copy(COCO / name, data / "pictures" / name)
    listing = data / "val_list.txt"
    listing.write_text("".join(f"pictures/{name} {label}\n" for name, label in IMAGENET_LABELLED.items()))
    report = quantize(resolve("efficientnet_lite0"), str(data), tmp_path / "int8.xml", subset=8, seconds=0.3,
                      labels_list=str(listing))
    assert report.metric == "top1" and report.xml.is_file()
    fp32, int8 = report.variants["FP32"], report.variants["INT8"]
    assert fp32.metric == 1.0 and fp32.extra == {"top-5 accuracy": 1.0}
    assert int8.metric >= 0.75 and int8.extra["top-5 accuracy"] >= 0.875
    assert set(report.variants) == {"FP32", "FP16", "INT8"} and all(v.fps > 0 for v in report.variants.values())
    rendered = Console(record=True, width=120)
    rendered.print(report_table("efficientnet_lite0", report))
    text = rendered.export_text()
    assert "top-5 accuracy" in text and "100.00%" in text


def test_heads_and_ignored_types_stay_in_floating_point(tiny_cfg: ModelConfig, tmp_path: Path) -> None:
    """--ignore-heads keeps the last weighted layer (the dense MatMul) float; --ignored-type Convolution
    the convolutions: the INT8 model then quantizes neither's input."""
    model = ov.Core().read_model(tiny_cfg.path)
    assert [model_op.get_type_name() for model_op in model.get_ordered_ops()
            if model_op.get_friendly_name() in head_layers(model)] == ["MatMul"]
    report = quantize(tiny_cfg, str(COCO), tmp_path / "int8.xml", subset=8, seconds=0.1, ignore_heads=True)
    fed = {port.get_node().get_type_name() for node in report.variants["INT8"].model.get_ordered_ops()
           if node.get_type_name() == "FakeQuantize" for port in node.output(0).get_target_inputs()}
    assert "Convolution" in fed and "MatMul" not in fed
    report = quantize(tiny_cfg, str(COCO), tmp_path / "int8b.xml", subset=8, seconds=0.1,
                      ignored_types=["Convolution"])
    fed = {port.get_node().get_type_name() for node in report.variants["INT8"].model.get_ordered_ops()
           if node.get_type_name() == "FakeQuantize" for port in node.output(0).get_target_inputs()}
    assert "Convolution" not in fed


@pytest.mark.skipif(not COCO_ANNOTATIONS.is_file(), reason="the shared COCO annotations are not here")
@pytest.mark.slow
def test_detector_int8_scored_by_coco_ap50(tmp_path: Path) -> None:
    """`ovstream quantize yolox_nano --annotations instances.json` on the 100 COCO images: FP32 / INT8 AP50
    and AP against the ground truth, and the 1-point verdict in the table. The graph is folded before
    quantization (MOC transformations): quantized as read from the ONNX file (unfused batch norms, shape
    subgraphs) INT8 lost 18.5 AP50 points; folded, 0.8 to 2.9 by CPU (docs/models.md), and with the mixed
    preset that ``--preset auto`` picks for its SiLU activations, -0.8 to 0.0. On a CPU without VNNI it needs
    the overflow fix on every layer too (30.6 points lost without it there; ``--overflow-fix auto`` applies
    it). The product's own verdict, a drop of at most 1 point, bounds it."""
    try:
        cfg = resolve("yolox_nano")
    except Exception as exc:                 # the model file lives in the shared folder, not the repository
        pytest.skip(f"yolox_nano is not in the model search path: {exc}")
    report = quantize(cfg, str(COCO), tmp_path / "int8.xml", subset=100, seconds=0.3,
                      annotations=str(COCO_ANNOTATIONS))
    assert report.metric == "ap50" and report.xml.is_file()
    fp32, int8 = report.variants["FP32"], report.variants["INT8"]
    assert fp32.metric == pytest.approx(0.52, abs=0.01) and set(fp32.extra) == {"COCO AP@[.5:.95]"}
    assert 0 < fp32.extra["COCO AP@[.5:.95]"] <= fp32.metric
    assert report.ap50_drop == pytest.approx(fp32.metric - int8.metric) and report.ap50_drop <= GOOD_AP50_DROP
    rendered = Console(record=True, width=160)
    rendered.print(report_table("yolox_nano", report))
    text = rendered.export_text()
    assert "COCO AP50" in text and "INT8 AP50 drop" in text and f"≤ {GOOD_AP50_DROP * 100:g} point" in text


def test_ap50_metric_needs_annotations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["quantize", "face", "--metric", "ap50", "--seconds", "0.1", "--output", str(tmp_path)]) == 2
    assert "--metric ap50 needs COCO ground truth" in capsys.readouterr().err


def test_the_overflow_fix_covers_every_layer_only_on_a_cpu_without_vnni(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from nncf.quantization.advanced_parameters import OverflowFix

    from engine.tools.modeltools import quantize as q
    avx2, vnni = tmp_path / "avx2", tmp_path / "vnni"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    vnni.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni\n")
    assert (q.cpu_has_vnni(avx2), q.cpu_has_vnni(vnni), q.cpu_has_vnni(tmp_path / "none")) == (False, True, True)
    for has, fix in ((False, OverflowFix.ENABLE), (True, OverflowFix.FIRST_LAYER)):
        monkeypatch.setattr(q, "cpu_has_vnni", lambda has=has: has)
        assert q.overflow_fix_for("auto") == fix
    assert q.overflow_fix_for("disable") == OverflowFix.DISABLE
