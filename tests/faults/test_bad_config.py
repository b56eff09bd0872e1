"""User mistakes found before any stage starts: exit code 2 and one stderr line saying what to fix.

(Complements tests/pipeline/test_run.py::test_user_mistakes_exit_2_with_one_line, which covers an
unknown device name, a missing .xml, an unknown registry name and a missing source folder.)
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, RunResult, ovstream_command, run_ovstream, shared

FACE_MODEL = REPO / "models" / "mediapipe" / "face_detection_full_range_sparse.tflite"
TIMEOUT = 45        # these fail in preflight, in about 2 s


def _one_line(result) -> str:
    assert result.code == 2, (result.code, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    assert not result.output.exists(), "the output folder was made for a run that never started"
    return lines[0]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("toml, expected", [
    ("[pipeline]\nheartbeat_s = 0\n", ["[pipeline] heartbeat_s must be a finite number from 0.01 to 5, not 0"]),
    ("[pipeline]\ninput_slots = -1\n", ["[pipeline] input_slots must be an integer from 0 to 1024, not -1"]),
    ("[inference]\nbatch = 4096\n", ["[inference] batch must be an integer from 0 to 256, not 4096"]),
    ("[model]\nscore_threshold = nan\n", ["[model] score_threshold must be a finite number, not nan"]),
    ("[model.preprocess]\nscale = [1.0, 0.0, 1.0]\n", ["[model.preprocess] scale", "> 0", "[1.0, 0.0, 1.0]"]),
    ("[inference]\nnreq = 2\n", ["[inference] unknown key 'nreq' (did you mean 'nireq'?)"]),
    ("[source\nuri = 'x'\n", ["not valid TOML"]),
], ids=["heartbeat-0", "input-slots-negative", "batch-4096", "nan", "scale-0", "unknown-key", "not-toml"])
def test_bad_config_file(engine_env, tmp_path, toml, expected):
    """A few of tests/unit/test_config.py's table through the real command line: exit 2, one line."""
    config = _config(tmp_path, toml)
    line = _one_line(run_ovstream(config, output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert line.startswith(f"ovstream run: error: {config}"), line
    for words in expected:
        assert words in line, line


@pytest.mark.parametrize("content, expected", [
    ("[source]\nuri = 'data/samples'\n".encode("utf-16"), "UTF-16"),
    (bytes(range(256)) * 4, "binary"),
], ids=["utf16", "binary"])
def test_config_file_that_is_not_text(engine_env, tmp_path, content, expected):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    line = _one_line(run_ovstream(str(path), output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert str(path) in line and expected in line and "save it as UTF-8" in line, line


@pytest.mark.parametrize("table, expected", [
    ("[inference.properties.CPU]\nNUM_STRAEMS = 2\n",
     "[inference.properties.CPU] NUM_STRAEMS is not a property of CPU (did you mean 'NUM_STREAMS'?)"),
    ("[inference.properties.CPU]\nFULL_DEVICE_NAME = 'x'\n",
     "[inference.properties.CPU] FULL_DEVICE_NAME is read-only"),
    ("[inference.properties.CPU]\nNUM_STREAMS = 'abc'\n",
     "[inference.properties.CPU] NUM_STREAMS: CPU refused it: Could not read number of streams"),
    ("[inference.properties.CPU]\nINFERENCE_PRECISION_HINT = 'f13'\n", "Supported values: bf16, f16, f32"),
], ids=["unknown", "read-only", "bad-value", "bad-enum"])
def test_openvino_property_is_a_preflight_error(engine_env, tmp_path, table, expected):
    config = _config(tmp_path, f"[model]\nname = 'face'\n{table}")
    line = _one_line(run_ovstream(config, output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert expected in line and "Exception from" not in line, line
    assert not (tmp_path / "out").exists(), "the output folder was touched before the checks passed"


def test_mean_of_the_wrong_length_for_the_model(engine_env, tmp_path):
    """GRAY on the 3-channel face detector: found against the model, before any process starts."""
    config = _config(tmp_path, "[model]\nname = 'face'\n[model.preprocess]\ncolor = 'GRAY'\nmean = [0.0]\n"
                               "scale = [1.0]\n")
    line = _one_line(run_ovstream(config, output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert "[model.preprocess] color GRAY gives 1 channel(s)" in line and "has 3: use RGB or BGR" in line, line


def test_batch_the_graph_cannot_take_is_found_before_start(engine_env, tmp_path):
    """The SSD's graph fixes batch 1 in a Reshape: pre-flight prepares the model as the workers do,
    so batch 2 is one line and exit 2 before any process or output exists."""
    result = run_ovstream("--batch", "2", output=tmp_path / "out", env=engine_env, timeout=TIMEOUT)
    line = _one_line(result)
    assert "cannot set batch 2" in line and "use batch = 1" in line and "Check '" not in line, line


def test_pools_larger_than_memory_are_refused_before_allocation(engine_env, tmp_path):
    config = _config(tmp_path, "[model]\nname = 'face'\n[pipeline]\nraw_slots = 1024\nmax_frame_width = 16384\n"
                               "max_frame_height = 16384\n")
    line = _one_line(run_ovstream(config, output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert "the frame pools would need 768.0 GiB" in line and "[pipeline] input_slots, raw_slots" in line, line


def test_missing_config_file(engine_env, tmp_path):
    line = _one_line(run_ovstream(str(tmp_path / "nope.toml"), output=tmp_path / "out", env=engine_env,
                                  timeout=TIMEOUT))
    assert "nope.toml" in line and "no such config file" in line


def test_bad_enum_on_the_command_line(engine_env, tmp_path):
    """argparse's own check: exit 2, no traceback; its usage lines come first (argparse's convention)."""
    result = run_ovstream("--hint", "FAST", output=tmp_path / "out", env=engine_env, timeout=TIMEOUT)
    assert result.code == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "--hint" in last and "'FAST'" in last and "THROUGHPUT" in last


def test_unknown_device_names_it_and_the_available_ones(engine_env, tmp_path):
    line = _one_line(run_ovstream("--device", "NPU", output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert "'NPU'" in line and "not available" in line and "CPU" in line


def test_unknown_device_inside_a_multi_device_string(engine_env, tmp_path):
    line = _one_line(run_ovstream("--device", "MULTI:CPU,NPU", output=tmp_path / "out", env=engine_env,
                                  timeout=TIMEOUT))
    assert "'NPU'" in line and "CPU" in line


def test_model_file_that_does_not_exist(engine_env, tmp_path):
    missing = tmp_path / "nowhere" / "model.onnx"
    line = _one_line(run_ovstream("--model", str(missing), "--adapter", "anchor_ssd", output=tmp_path / "out",
                                  env=engine_env, timeout=TIMEOUT))
    assert "model file not found" in line and str(missing) in line


def test_model_file_with_unsupported_suffix(engine_env, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(256))
    config = _config(tmp_path, f"[model]\nname = 'mine'\npath = '{path}'\nadapter = 'anchor_ssd'\n")
    line = _one_line(run_ovstream(config, output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert str(path) in line and "unsupported model format '.bin'" in line


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_file_that_is_not_a_model(engine_env, tmp_path, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(os.urandom(4096))
    out = tmp_path / "out"     # stderr read as bytes: OpenVINO's readers may print undecodable ones
    proc = subprocess.run(ovstream_command("run", "--model", str(path), "--adapter", "anchor_ssd",
                                           "--output", str(out), "--no-dashboard"),
                          cwd=REPO, capture_output=True, timeout=TIMEOUT, env=engine_env)
    result = RunResult(proc.returncode, proc.stdout.decode(errors="replace"),
                       proc.stderr.decode(errors="replace"), out)
    line = _one_line(result)
    assert "cannot read model" in line and str(path) in line, line
    assert "Exception from src/" not in line, f"OpenVINO's source location instead of the reason: {line}"


@pytest.mark.parametrize("adapter, expected", [
    ("ssd_detection_output", "expects an output [1,1,N,7]"),
    ("tf_od_api", "detection_boxes"),
    ("classification", "expects one output [1,C]"),
])
def test_model_outputs_that_do_not_fit_the_adapter(engine_env, tmp_path, adapter, expected):
    """The face model (outputs [1,2304,16] and [1,2304,1]) under a name of its own, with another adapter."""
    config = _config(tmp_path, f"[model]\nname = 'mine'\npath = '{FACE_MODEL}'\nadapter = '{adapter}'\n")
    result = run_ovstream(config, output=tmp_path / "out", env=engine_env, timeout=TIMEOUT)
    line = _one_line(result)
    assert adapter in line and expected in line and "[1, 2304, 16]" in line, line


@pytest.mark.parametrize("adapter", ["ssd_detection_output", "classification"])
def test_adapter_override_on_the_registry_model(engine_env, tmp_path, adapter):
    """`--adapter X` on the default face model: the one line must be about X not fitting the model,
    not about registry parameters of the model's own adapter that the user never wrote."""
    line = _one_line(run_ovstream("--model", "face", "--adapter", adapter, output=tmp_path / "out", env=engine_env,
                                  timeout=TIMEOUT))
    assert adapter in line and "output" in line, line


def test_unknown_adapter(engine_env, tmp_path):
    line = _one_line(run_ovstream("--adapter", "yolo9000", output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert "unknown adapter 'yolo9000'" in line and "anchor_ssd" in line


def test_empty_source_folder(engine_env, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("no pictures here")
    line = _one_line(run_ovstream("--source", str(folder), output=tmp_path / "out", env=engine_env,
                                  timeout=TIMEOUT))
    assert str(folder) in line and "no images" in line and "recursive" in line


def test_source_path_that_does_not_exist(engine_env, tmp_path):
    missing = tmp_path / "no" / "such" / "clip.mp4"
    line = _one_line(run_ovstream("--source", str(missing), output=tmp_path / "out", env=engine_env,
                                  timeout=TIMEOUT))
    assert str(missing) in line and "no such file or folder" in line


def test_source_file_of_an_unknown_kind(engine_env, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    line = _one_line(run_ovstream("--source", str(path), output=tmp_path / "out", env=engine_env,
                                  timeout=TIMEOUT))
    assert str(path) in line and "'.txt'" in line and "neither an image" in line


MNIST = REPO / "models" / "mnist" / "mnist.xml"
EFFICIENTNET = REPO / "models" / "efficientnet_lite0" / "efficientnet_lite0_fp16.xml"
NANODET = shared("models/nanodet_m/nanodet_m_416.onnx")


@pytest.mark.parametrize("args, toml, expected", [
    # the 1-channel MNIST CNN under a name of its own with the default colour (RGB): once a raw "Check …
    # failed" in inference-0 (`--model models/mnist/mnist.xml` alone now takes the mnist registry entry)
    ([], f"[model]\nname = 'digits'\npath = '{MNIST}'\nadapter = 'classification'\n",
     ["[model.preprocess] color RGB gives 3 channel(s)", "mnist.xml has 1: use GRAY"]),
    ([], f"[model]\nname = 'digits'\npath = '{MNIST}'\nadapter = 'classification'\n[model.preprocess]\ncolor = 'BGR'\n",
     ["color BGR gives 3 channel(s)", "use GRAY"]),
    ([], f"[model]\nname = 'net'\npath = '{EFFICIENTNET}'\nadapter = 'classification'\n[model.preprocess]\n"
         f"color = 'GRAY'\nmean = [0.0]\nscale = [1.0]\n",
     ["color GRAY gives 1 channel(s)", "efficientnet_lite0_fp16.xml has 3: use RGB or BGR"]),
    ([], f"[model]\nname = 'net'\npath = '{EFFICIENTNET}'\nadapter = 'classification'\n"
         f"[model.params]\nlayout = 'NHWC'\n",
     ["read as NHWC is 3×224×224, not an image of 1 or 3 channels", "layout = 'NHWC' reads it so"]),
    (["--model", str(EFFICIENTNET), "--adapter", "tf_od_api"], "", ["tf_od_api expects", "logits [1, 1000]"]),
    (["--model", str(NANODET), "--adapter", "yolo"], "", ["yolo expects one output", "[1, 2704, 80]"]),
    (["--model", str(MNIST), "--adapter", "nanodet"],
     "[model.preprocess]\ncolor = 'GRAY'\nmean = [0.0]\nscale = [1.0]\n",
     ["nanodet expects", "[1, 10]"]),
], ids=["mnist-rgb", "mnist-bgr", "rgb-model-gray", "wrong-layout", "classifier-as-detector", "nanodet-as-yolo",
        "classifier-as-nanodet"])
def test_model_that_does_not_fit_its_adapter_is_found_before_start(engine_env, tmp_path, args, toml, expected):
    """Input channels, colour, layout and output shapes are checked against the adapter in the
    pre-flight: exit 2, one line, no stage started, and none of OpenVINO's own text."""
    config = [_config(tmp_path, toml)] if toml else []
    result = run_ovstream(*config, *args, output=tmp_path / "out", env=engine_env, timeout=TIMEOUT)
    line = _one_line(result)
    assert all(words in line for words in expected), line
    assert "Exception from" not in line and "Check '" not in line and "src/" not in line, line
