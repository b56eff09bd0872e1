"""Config: defaults that work, and one clear line for every mistake."""
from __future__ import annotations

import pytest

from engine.config import load_config
from engine.errors import ConfigError, ModelError


def test_default_config_resolves_the_bundled_coco_ssd():
    cfg = load_config()
    assert cfg.model.name == "ssd_mobilenet_v1_coco" and cfg.model.adapter == "tf_od_api"
    assert cfg.model.path.endswith("detect.tflite") and cfg.model.preprocess.resize == "stretch"
    assert cfg.model.labels[1] == "person" and cfg.model.labels[13] == "stop sign"   # index = COCO id
    assert cfg.model.params["class_offset"] == 1 and cfg.inference.devices == ["CPU"]


@pytest.mark.parametrize("text, message", [
    ("[inference]\nnreq = 2\n", "unknown key 'nreq' (did you mean 'nireq'?)"),
    ("[inference]\nbatch = 'four'\n", "inference.batch: expected an integer"),
    ("[inference]\ndevices = 'CPU'\n", "expected a list"),
    ("[sauce]\nuri = 'x'\n", "top level unknown key 'sauce' (did you mean 'source'?)"),
    ("[inference\n", "not valid TOML"),
    ("[inference]\nbatch = 0\n", "batch must be >= 1"),
    ("[model]\npreprocess = { resize = 'zoom' }\n", "resize must be letterbox, stretch or crop"),
    ("[model]\npreprocess = { resize = 'crop', crop = 1.5 }\n", "crop must be a fraction in (0, 1]"),
    ("[model]\npreprocess = { interpolation = 'bicubic' }\n", "interpolation must be auto, nearest"),
    ("[output.mqtt]\nhost = 'h'\nqos = 2\n", "[output.mqtt] qos must be 0 or 1"),
    ("[output.mqtt]\ntopic = 'a/+/b'\n", "without + or # wildcards"),
    ("[output.mqtt]\ntopic = 'a/{camera}'\n", "the only placeholder is {stream}"),
    ("[output.mqtt]\nhost = 'h'\nclean_session = false\n", "needs a client_id"),
    ("[output.mqtt]\nhost = 'h'\ntls = true\nca = '/nonexistent/ca.pem'\n", "ca: no such file"),
    ("[output.mqtt]\nbuffer = 0\n", "[output.mqtt] buffer must be >= 1"),
    ("[output.mqtt]\nqos = '1'\n", "output.mqtt.qos: expected an integer"),
    ("[metrics]\nport = 70000\n", "[metrics] port must be 0..65535"),
    ("[metrics]\nprot = 9464\n", "unknown key 'prot' (did you mean 'port'?)"),
])
def test_config_mistakes_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_model_mistakes(tmp_path):
    with pytest.raises(ModelError, match="is not in"):
        load_config(overrides={"model": {"name": "nope"}})
    with pytest.raises(ModelError, match="model file not found"):
        load_config(overrides={"model": {"path": str(tmp_path / "m.xml"), "adapter": "classification"}})
    (tmp_path / "m.xml").write_text("<net/>")
    with pytest.raises(ModelError, match="unknown adapter 'yolo9000'"):
        load_config(overrides={"model": {"path": str(tmp_path / "m.xml"), "adapter": "yolo9000"}})


def test_sources_take_defaults_from_source_and_get_unique_names(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "c.toml"
    path.write_text(f"""
[source]
loop = 3
[[sources]]
uri = "{tmp_path}/*.mp4"
[[sources]]
uri = "data/coco100"
[[sources]]
uri = "data/coco100"
loop = 1
[[sources]]
uri = "rtsp://127.0.0.1:8554/live/cam1?x=1"
[[sources]]
uri = "0"
realtime = true
""")
    cfg = load_config(path)
    assert [(s.name, s.loop) for s in cfg.sources] == [("a", 3), ("b", 3), ("coco100", 3), ("coco100-2", 1),
                                                       ("cam1", 3), ("cam0", 3)]
    assert cfg.sources[-1].realtime and cfg.sources[0].uri.endswith("a.mp4")
    assert [s.name for s in load_config().sources] == ["coco100"]      # [source] alone: one stream
