"""ovstream convert: formats, numerical equivalence with reference runtimes, FP16, preprocessing, registry."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from engine.cli import main as cli
from engine.config import (
    ModelConfig,
    PreprocessConfig,
    RunConfig,
    tomllib,  # the stdlib module, or tomli on Python 3.10
)
from engine.core.errors import ConfigError, ModelError
from engine.model.prepare import prepare_model
from engine.tools.modeltools.convert import convert, default_name, inspect_source, per_channel
from engine.tools.modeltools.registry import register_model, render_entry
from tests.conftest import COCO, REPO

FACE = REPO / "models" / "mediapipe" / "face_detection_full_range_sparse.tflite"
F32 = {"INFERENCE_PRECISION_HINT": "f32"}   # some CPUs default to bf16: compare like with like


def compiled(model: ov.Model | Path) -> ov.CompiledModel:
    return ov.Core().compile_model(model, "CPU", F32)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    shutil.copy(REPO / "models" / "models.toml", path)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small NCHW classifier built with the onnx package: conv, relu, pool, dense, softmax."""
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[tools]')")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)
               for name, shape in (("w", (8, 3, 3, 3)), ("b", (8,)), ("fc", (8, 10)), ("fcb", (10,)))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=1)]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, path)
    return path


# ---- numerical equivalence -------------------------------------------------------------------------

def test_onnx_matches_onnxruntime(tiny_onnx: Path, tmp_path: Path, registry: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[tools]')")
    result = convert(tiny_onnx, "tiny", tmp_path, registry=registry)
    assert result.xml.is_file() and result.xml.with_suffix(".bin").is_file()
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = compiled(result.xml)(x)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_fp16_ir_is_close_to_fp32(tiny_onnx: Path, tmp_path: Path, registry: Path) -> None:
    fp32 = convert(tiny_onnx, "tiny", tmp_path / "fp32", registry=registry).xml
    fp16 = convert(tiny_onnx, "tiny_fp16", tmp_path / "fp16", precision="FP16", registry=registry).xml
    assert fp16.with_suffix(".bin").stat().st_size < 0.75 * fp32.with_suffix(".bin").stat().st_size
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(compiled(fp16)(x)[0], compiled(fp32)(x)[0], atol=2e-3)


def face_input() -> np.ndarray:
    return np.random.default_rng(3).uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)


def tflite_reference(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the TFLite reference interpreter (LiteRT, else tf.lite), or a skip."""
    if importlib.util.find_spec("ai_edge_litert"):
        from ai_edge_litert.interpreter import Interpreter
    elif importlib.util.find_spec("tensorflow"):
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    else:
        pytest.skip("no TFLite reference interpreter (pip install ai-edge-litert, or tensorflow)")
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


@pytest.fixture(scope="module")
def face_ir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    registry = tmp_path_factory.mktemp("registry") / "models.toml"
    shutil.copy(REPO / "models" / "models.toml", registry)
    return convert(FACE, "face", tmp_path_factory.mktemp("face"), registry=registry).xml


def test_tflite_ir_matches_direct_read(face_ir: Path) -> None:
    x = face_input()
    direct, ir = compiled(ov.Core().read_model(FACE)), compiled(face_ir)
    for port, expected in direct(x).items():
        np.testing.assert_allclose(ir(x)[port.any_name], expected, rtol=1e-5, atol=1e-4)


def test_tflite_ir_matches_reference_interpreter(face_ir: Path) -> None:
    x = face_input()
    reference = tflite_reference(FACE, x)
    outputs = compiled(face_ir)(x)
    for port in compiled(face_ir).outputs:
        expected = reference[port.any_name]
        np.testing.assert_allclose(outputs[port.any_name], expected, atol=1e-3 * float(np.abs(expected).max()))


def test_face_fp16_matches_fp32(face_ir: Path, tmp_path: Path, registry: Path) -> None:
    fp16 = convert(FACE, "face_fp16", tmp_path, precision="FP16", registry=registry).xml
    x = face_input()
    a, b = compiled(face_ir)(x), compiled(fp16)(x)
    for port in compiled(face_ir).outputs:
        ref = a[port.any_name]
        np.testing.assert_allclose(b[port.any_name], ref, atol=0.02 * float(np.abs(ref).max()))


# ---- embedded preprocessing --------------------------------------------------------------------------

def test_embedded_preprocessing_equals_engine_ppp_and_numpy(face_ir: Path, tmp_path: Path, registry: Path) -> None:
    result = convert(FACE, "face", tmp_path, embed=True, registry=registry)
    assert result.model.input().get_element_type() == ov.Type.u8
    assert result.entry["preprocess"] == {"resize": "letterbox", "color": "BGR", "mean": [0.0] * 3,
                                          "scale": [1.0] * 3}
    bgr = cv2.resize(cv2.imread(str(COCO / "000000000139.jpg")), (192, 192))
    embedded = compiled(result.xml)(bgr[None])
    # the raw IR with the engine's own PrePostProcessor at load time ...
    face = ModelConfig(name="face", path=str(face_ir), preprocess=PreprocessConfig(
        resize="letterbox", color="RGB", mean=[127.5] * 3, scale=[127.5] * 3))
    engine = compiled(prepare_model(ov.Core().read_model(face_ir), face, batch=1)[0])(bgr[None])
    # ... and the raw IR fed by hand
    manual = compiled(face_ir)(((bgr[..., ::-1].astype(np.float32) - 127.5) / 127.5)[None])
    # and the engine loading the embedded IR with its registered (identity) conventions changes nothing
    registered = ModelConfig(name="face", path=str(result.xml),
                             preprocess=PreprocessConfig(**result.entry["preprocess"]))
    reloaded = compiled(prepare_model(ov.Core().read_model(result.xml), registered, batch=1)[0])(bgr[None])
    for i in range(2):
        np.testing.assert_allclose(embedded[i], engine[i], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(embedded[i], manual[i], rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(reloaded[i], embedded[i])


def test_gray_embedding_rejects_colour_model(tiny_onnx: Path, tmp_path: Path, registry: Path) -> None:
    with pytest.raises(ConfigError, match="GRAY needs a 1-channel"):
        convert(tiny_onnx, "tiny", tmp_path, embed=True, pre={"color": "GRAY"}, registry=registry)


# ---- formats and errors -------------------------------------------------------------------------------

def test_truncated_onnx_is_one_clear_line(tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 2])
    assert cli(["convert", str(broken), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a readable ONNX model" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_random_bytes_tflite_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(np.random.default_rng(4).bytes(4096))
    assert cli(["convert", str(junk), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a TFLite model" in err


def test_truncated_tflite_with_valid_header(tmp_path: Path, registry: Path) -> None:
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(FACE.read_bytes()[:100_000])
    with pytest.raises(ModelError, match="cut.tflite: cannot convert: .*corrupted or malformed"):
        convert(cut, "cut", tmp_path / "out", registry=registry)


@pytest.mark.parametrize("name, message", [("model.h5", "unknown model format"), ("missing.onnx", "no such file")])
def test_unknown_or_missing_input(tmp_path: Path, name: str, message: str) -> None:
    if name.endswith(".h5"):
        (tmp_path / name).write_bytes(b"\x89HDF")
    with pytest.raises(ModelError, match=message):
        inspect_source(tmp_path / name)


def test_folder_without_saved_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="SavedModel"):
        inspect_source(tmp_path)


def test_register_needs_an_adapter(tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["convert", str(tiny_onnx), "--output", str(tmp_path), "--register"]) == 2
    assert "--register needs --adapter" in capsys.readouterr().err


def test_names_and_channels() -> None:
    assert default_name(Path("/x/ssd_mobilenet_v2_320x320_coco17_tpu-8/saved_model")) == \
        "ssd_mobilenet_v2_320x320_coco17_tpu-8"
    assert default_name(FACE, "FP16") == "face_detection_full_range_sparse_fp16"
    assert per_channel([127.5], 3, "mean") == [127.5] * 3
    assert per_channel([0.0, 0.0, 0.0], 1, "mean") == [0.0]
    with pytest.raises(ConfigError):
        per_channel([1.0, 2.0], 3, "mean")


def test_tf2_od_api_layout(tmp_path: Path, registry: Path) -> None:
    """A SavedModel beside a pipeline.config is a TF2 OD API export: uint8 input sized from the
    pipeline's fixed_shape_resizer, tf_od_api adapter, stretch, COCO labels."""
    tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install -e '.[train]')")

    class Detector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def __call__(self, image: tf.Tensor) -> dict:
            pooled = tf.reduce_mean(tf.cast(image, tf.float32) / 255.0, axis=[1, 2])
            boxes = tf.reshape(tf.concat([pooled, pooled[:, :1]], axis=1), [1, 1, 4])
            score = tf.reduce_max(pooled, axis=1, keepdims=True)
            return {"detection_boxes": boxes, "detection_scores": score, "detection_classes": score + 1.0,
                    "num_detections": tf.reduce_sum(score, axis=1)}

    export = tmp_path / "ssd_tiny_coco17"
    detector = Detector()
    tf.saved_model.save(detector, str(export / "saved_model"), signatures={"serving_default": detector.__call__})
    (export / "pipeline.config").write_text(
        "model { ssd { num_classes: 90\n image_resizer { fixed_shape_resizer { height: 320 width: 320 } } } }\n")
    result = convert(export, default_name(export), tmp_path / "ir", registry=registry)
    port = result.model.input()
    assert list(port.get_shape()) == [1, 320, 320, 3] and port.get_element_type() == ov.Type.u8
    assert result.entry["adapter"] == "tf_od_api" and result.entry["labels"] == "data/coco91_labels.tsv"
    assert result.entry["preprocess"]["resize"] == "stretch" and result.entry["preprocess"]["color"] == "RGB"
    names = {name for out in result.model.outputs for name in out.get_names()}
    assert {"detection_boxes", "detection_scores", "detection_classes"} <= names
    register_model("ssd_tiny", result.entry, registry)
    entry = tomllib.loads(registry.read_text())["ssd_tiny"]
    assert entry["file"] == "ir/ssd_tiny_coco17.xml"            # relative to the registry's folder


# ---- registry ----------------------------------------------------------------------------------------

def test_register_keeps_the_rest_of_the_registry(tiny_onnx: Path, registry: Path, tmp_path: Path) -> None:
    before = registry.read_text()
    result = convert(tiny_onnx, "tiny", registry.parent / "tiny", adapter="classification",
                     labels=[str(i) for i in range(10)], pre={"resize": "stretch", "mean": [127.5]},
                     registry=registry)
    register_model("tiny", result.entry, registry)
    after = registry.read_text()
    assert after.startswith(before.rstrip("\n"))           # comments and entries untouched
    data = tomllib.loads(after)
    assert data["tiny"]["file"] == "tiny/tiny.xml"          # relative to the registry's folder
    assert data["tiny"]["preprocess"] == {"resize": "stretch", "color": "RGB", "mean": [127.5] * 3,
                                          "scale": [1.0] * 3}
    RunConfig.from_dict({"model": {k: v for k, v in data["tiny"].items() if k != "file"}})
    # updating replaces the entry in place, keeping keys the update does not name
    register_model("face", {**data["face"], "description": "updated"}, registry)
    again = tomllib.loads(registry.read_text())
    assert list(again) == list(data) and again["face"]["description"] == "updated"
    assert again["face"]["params"] == data["face"]["params"] and again["tiny"] == data["tiny"]


def test_render_entry_and_bad_entries(registry: Path) -> None:
    text = render_entry("x", {"file": "a b.xml", "adapter": "classification", "labels": ['say "hi"'],
                              "params": {"k": [1, 2.5], "flag": True}})
    assert tomllib.loads(text)["x"]["params"] == {"k": [1, 2.5], "flag": True}
    with pytest.raises(ConfigError, match="adapter"):
        register_model("x", {"file": "x.xml", "adapter": "nope"}, registry)
    with pytest.raises(ConfigError, match="letters"):
        register_model("bad name", {"file": "x.xml", "adapter": "classification"}, registry)


def test_frozen_graph_matches_tensorflow(tmp_path: Path, registry: Path) -> None:
    tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install -e '.[train]')")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    kernel = tf.constant(np.random.default_rng(5).standard_normal((3, 3, 3, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, name="x")])
    def net(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))

    frozen = convert_variables_to_constants_v2(net.get_concrete_function())
    tf.io.write_graph(frozen.graph.as_graph_def(), str(tmp_path), "frozen.pb", as_text=False)
    result = convert(tmp_path / "frozen.pb", "frozen", tmp_path / "ir", registry=registry)
    x = np.random.default_rng(6).random((1, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(compiled(result.xml)(x)[0], net(x).numpy(), rtol=1e-5, atol=1e-5)
