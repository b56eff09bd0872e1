"""The model cache: where it lives, what invalidates an entry, and that a cached model is the same model."""
from __future__ import annotations

import json
import logging

import numpy as np
import openvino as ov
import pytest

from engine.config import load_config
from engine.control.preflight import preflight
from engine.model.cache import ModelCache, cache_root, entry_key, writable
from engine.model.prepare import load_compiled, model_facts, prepare_model, read_model


def test_cache_root_auto_off_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("auto") == tmp_path / "xdg" / "ovstream"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root("auto") == tmp_path / "home" / ".cache" / "ovstream"
    for off in ("off", "", "OFF", "none"):
        assert cache_root(off) is None
    assert cache_root(str(tmp_path / "mine")) == tmp_path / "mine"


@pytest.fixture
def warnings_seen(caplog, monkeypatch):
    """The warnings ovstream logs, also after a CLI test configured its loggers not to propagate."""
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)
    caplog.set_level(logging.WARNING)
    return caplog


def test_an_unwritable_cache_is_skipped(tmp_path, warnings_seen):
    caplog = warnings_seen
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert writable(blocker / "cache") is None
    assert "not writable" in caplog.text
    assert writable(None) is None
    assert writable(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"


def test_entry_key_follows_the_file_preprocessing_and_batch(tmp_path):
    cfg = load_config(None, {"model": {"name": "face"}}).model
    key = entry_key(cfg, 1)
    assert entry_key(cfg, 1) == key
    assert entry_key(cfg, 2) != key
    other = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"color": "BGR"})})
    assert entry_key(other, 1) != key
    copy = tmp_path / "model.tflite"
    copy.write_bytes(open(cfg.path, "rb").read())
    moved = cfg.model_copy(update={"path": str(copy)})
    assert entry_key(moved, 1) == key                           # contents, not the path
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert entry_key(moved, 1) != key
    # weights beside the graph file count too: an IR's .bin, an ONNX model's external data
    ir = load_config(None, {"model": {"name": "mnist"}}).model
    xml = tmp_path / "ir" / "m.xml"
    xml.parent.mkdir()
    xml.write_bytes(open(ir.path, "rb").read())
    xml.with_suffix(".bin").write_bytes(open(str(ir.path)[:-4] + ".bin", "rb").read())
    ir_moved = ir.model_copy(update={"path": str(xml)})
    before = entry_key(ir_moved, 1)
    xml.with_suffix(".bin").write_bytes(xml.with_suffix(".bin").read_bytes()[:-4] + b"\1\2\3\4")
    assert entry_key(ir_moved, 1) != before
    onnx = cfg.model_copy(update={"path": str(tmp_path / "onnx" / "m.onnx")})
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "m.onnx").write_bytes(b"graph")
    (tmp_path / "onnx" / "weights.data").write_bytes(b"1234")
    before = entry_key(onnx, 1)
    (tmp_path / "onnx" / "weights.data").write_bytes(b"123456")
    assert entry_key(onnx, 1) != before


def test_stored_model_gives_the_same_outputs_and_facts(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = load_config(None, {"model": {"name": "face"}, "inference": {"batch": 1}})
    assert cfg.inference.cache_dir == "auto"                    # on by default
    cache = ModelCache(tmp_path / "xdg" / "ovstream")
    assert cache.lookup(cfg.model, 1) is None
    core = ov.Core()
    original = read_model(core, cfg.model.path)
    facts = model_facts(original, cfg.model)
    reference, info = prepare_model(original, cfg.model, 1)
    preflight(cfg)                                              # the run's checks store the entry
    hit = cache.lookup(cfg.model, 1)
    assert hit is not None and hit[1] == json.loads(json.dumps(facts))
    assert preflight(cfg) == (info, 1)                          # and check from it the second time
    cached = load_compiled(core, cfg, "CPU", 1)
    assert any(cache.compiled_dir.iterdir())                    # OpenVINO's compiled blob beside it
    pixels = np.random.default_rng(0).integers(0, 255, (1, info.height, info.width, 3), dtype=np.uint8)
    want = core.compile_model(reference, "CPU")(pixels)
    got = cached(pixels)
    for a, b in zip(want.values(), got.values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_cache_off_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = load_config(None, {"model": {"name": "face"}, "inference": {"cache_dir": "off"}})
    preflight(cfg)
    load_compiled(ov.Core(), cfg, "CPU", 1)
    assert not (tmp_path / "xdg").exists()


def test_a_failed_store_is_not_fatal(tmp_path, warnings_seen):
    caplog = warnings_seen
    cfg = load_config(None, {"model": {"name": "face"}}).model
    root = tmp_path / "cache"
    root.mkdir()
    (root / "models").write_text("a file where the folder should be")
    model, _ = prepare_model(read_model(ov.Core(), cfg.path), cfg, 1)
    assert ModelCache(root).store(cfg, 1, model, {}) is None
    assert "cannot store" in caplog.text


def test_lookup_ignores_an_incomplete_entry(tmp_path):
    batch = 1
    cfg = load_config(None, {"model": {"name": "face"}}).model
    cache = ModelCache(tmp_path)
    entry = tmp_path / "models" / entry_key(cfg, batch)
    entry.mkdir(parents=True)
    (entry / "model.xml").write_text("<net/>")                  # no weights, no facts: not an entry
    assert cache.lookup(cfg, batch) is None


def test_auto_and_off_are_words_not_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for word in ("auto", "off"):
        cfg = load_config(None, {"model": {"name": "face"}, "inference": {"cache_dir": word}})
        assert cfg.inference.cache_dir == word
    config = tmp_path / "run.toml"
    config.write_text('[model]\nname = "face"\n[inference]\ncache_dir = "mine"\n')
    assert load_config(config).inference.cache_dir == str(tmp_path / "mine")     # a folder: beside the config


def test_damaged_entries_fall_back_to_the_original(tmp_path, monkeypatch, warnings_seen):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = load_config(None, {"model": {"name": "face"}, "inference": {"batch": 1}})
    preflight(cfg)
    cache = ModelCache(tmp_path / "xdg" / "ovstream")
    xml, facts = cache.lookup(cfg.model, 1)
    (xml.parent / "facts.json").write_text(json.dumps({"input": {"name": "x"}, "outputs": {}}))
    assert cache.lookup(cfg.model, 1) is None                   # facts that do not fit: not an entry
    (xml.parent / "facts.json").write_text(json.dumps(facts))
    xml.write_text("<net name='broken'>")                      # an IR OpenVINO cannot read
    compiled = load_compiled(ov.Core(), cfg, "CPU", 1)          # read from the original file instead
    assert len(compiled.outputs) == len(facts["outputs"])
    assert "did not compile" in warnings_seen.text
    again, _ = cache.lookup(cfg.model, 1)                       # the damaged entry was written anew
    assert ov.Core().compile_model(str(again), "CPU") is not None
