"""Where things are found and written: bundled resources, OVSTREAM_HOME, paths relative to a config."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.config import load_config, load_registry
from engine.core import paths
from engine.core.errors import ModelError
from engine.tools.modeltools.registry import register_model
from tests.conftest import COCO, REPO


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OVSTREAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_home_defaults_under_the_xdg_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("OVSTREAM_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.home() == tmp_path / "xdg" / "ovstream"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert paths.home() == tmp_path / "me" / ".local" / "share" / "ovstream"
    monkeypatch.setenv("OVSTREAM_HOME", str(tmp_path / "mine"))
    assert paths.user_registry() == tmp_path / "mine" / "models" / "models.toml"


def test_a_checkout_is_its_own_resource_root():
    assert paths.bundled_root() == REPO
    assert paths.bundled(paths.REGISTRY).is_file() and paths.bundled(paths.DEFAULT_CONFIG).is_file()


def test_relative_paths_in_a_config_are_relative_to_it(home, tmp_path, monkeypatch):
    """Beside the config first, else a bundled resource; outputs beside the config; the command line's
    paths from the working directory."""
    project = tmp_path / "project"
    (project / "imgs").mkdir(parents=True)
    shutil.copy(COCO / "000000000139.jpg", project / "imgs")
    shutil.copy(REPO / "models" / "mnist" / "mnist.xml", project / "digits.xml")
    shutil.copy(REPO / "models" / "mnist" / "mnist.bin", project / "digits.bin")
    (project / "run.toml").write_text(
        "[[sources]]\nuri = 'imgs'\n[[sources]]\nuri = 'data/samples'\n[[sources]]\nuri = 'imgs/*.jpg'\n"
        "[model]\nname = 'mnist'\npath = 'digits.xml'\n[output]\ndir = 'out'\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(project / "run.toml")
    assert [s.uri for s in cfg.sources] == [str(project / "imgs"), str(REPO / "data" / "samples"),
                                            str(project / "imgs" / "000000000139.jpg")]
    assert cfg.model.path == str(project / "digits.xml") and cfg.output.dir == str(project / "out")
    assert cfg.model.preprocess.color == "GRAY"          # the registry entry's settings, the user's file
    cli = load_config(project / "run.toml", {"sources": [{"uri": "data/mnist_samples"}], "output": {"dir": "o"}})
    assert [s.uri for s in cli.sources] == [str(REPO / "data" / "mnist_samples")]
    assert cli.output.dir == str(elsewhere / "o")
    with pytest.raises(ModelError, match="model file not found: " + str(project / "missing.xml")):
        load_config(project / "run.toml", {"model": {"path": str(project / "missing.xml")}})


def test_bundled_configs_are_found_by_name_and_write_to_the_working_directory(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/mnist.toml")
    assert cfg.sources[0].uri == str(REPO / "data" / "mnist_samples")
    assert cfg.output.dir == str(tmp_path / "runs" / "mnist")
    assert load_config().output.dir == str(tmp_path / "runs" / "default")
    assert load_config().model.path == str(REPO / "models" / "ssd_mobilenet_v2_coco" /
                                           "mobilenet_ssd_v2_coco_quant_postprocess.tflite")


def test_the_user_registry_is_read_over_the_bundled_one(home, tmp_path):
    """Entries registered in OVSTREAM_HOME win by name; their files are relative to that registry,
    their labels may name bundled files; nothing is written beside the bundled registry."""
    bundled_before = paths.bundled(paths.REGISTRY).read_bytes()
    (home / "models" / "face").mkdir(parents=True)
    shutil.copy(REPO / "models" / "mediapipe" / "face_detection_short_range.tflite",
                home / "models" / "face" / "f.tflite")
    entry = {**load_registry(paths.bundled(paths.REGISTRY))["face_short"], "file": "face/f.tflite"}
    register_model("face", entry)                         # the user's 'face' is the short-range model
    register_model("coco_thing", {**entry, "labels": "data/coco91_labels.tsv"})
    assert paths.user_registry().is_file() and paths.bundled(paths.REGISTRY).read_bytes() == bundled_before
    registry = load_registry()
    assert registry["face"]["file"] == "face/f.tflite" and "ssd_mobilenet_v1_coco" in registry
    face = load_config(overrides={"model": {"name": "face"}}).model
    assert face.path == str(home / "models" / "face" / "f.tflite") and face.params["num_layers"] == 4
    thing = load_config(overrides={"model": {"name": "coco_thing"}}).model
    assert thing.labels[:2] == ["background", "person"]
    ssd = load_config().model                             # bundled entries keep their bundled files
    assert ssd.labels[1] == "person" and Path(ssd.path).is_relative_to(REPO / "models")


def test_models_that_are_not_bundled_are_found_in_the_model_search_path(home, tmp_path, monkeypatch):
    """A registry entry whose file is not bundled (NanoDet-m) is looked for in OVSTREAM_HOME/models,
    OVSTREAM_MODEL_PATH and the shared folder's models/; missing everywhere, the error says where it looked."""
    nanodet = load_config(overrides={"model": {"name": "nanodet_m"}}).model
    assert Path(nanodet.path) == paths.shared("models/nanodet_m/nanodet_m_416.onnx")
    assert nanodet.labels[0] == "person" and len(nanodet.labels) == 80
    mine = tmp_path / "mine"
    (mine / "nanodet_m").mkdir(parents=True)
    shutil.copy(nanodet.path, mine / "nanodet_m" / "nanodet_m_416.onnx")
    monkeypatch.setenv("OVSTREAM_MODEL_PATH", str(mine))
    assert load_config(overrides={"model": {"name": "nanodet_m"}}).model.path == str(mine / "nanodet_m" /
                                                                                      "nanodet_m_416.onnx")
    monkeypatch.setenv("OVSTREAM_MODEL_PATH", "")
    monkeypatch.setenv("OVSTREAM_SHARED", str(tmp_path / "no-shared"))
    with pytest.raises(ModelError, match=r"model file not found: .*nanodet_m_416.onnx \(nor in the model search "
                                         r"path: .*; model 'nanodet_m' is not bundled\)"):
        load_config(overrides={"model": {"name": "nanodet_m"}})


def test_labels_tables_give_their_last_column():
    """A ``.tsv`` labels table (COCO id or ImageNet synset, then the name) gives the names, line i = class i."""
    imagenet = load_config(overrides={"model": {"name": "efficientnet_lite0"}}).model.labels
    assert len(imagenet) == 1000 and imagenet[0] == "tench, Tinca tinca" and imagenet[999].startswith("toilet tissue")
    coco = load_config().model.labels
    assert len(coco) == 91 and coco[1] == "person" and coco[90] == "toothbrush"
