"""Config: defaults that work, and one clear line for every mistake.

The table below holds malformed values for every key of every section (wrong type, out of range,
NaN/inf, empty, wrong length, unknown); each must be refused by the loader with one line naming
the file, the section and the key, and saying what is allowed. The loader runs in-process here
(fast); tests/faults/test_bad_config.py sends a few of them through the real command line.
"""
from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError

from engine.config import RunConfig, load_config
from engine.core.errors import ConfigError, ModelError

# (section, key, TOML value, words the message must contain besides file, section and key)
MALFORMED = [
    # [source]
    ("source", "uri", "5", "a non-empty string"),
    ("source", "uri", "''", "a non-empty string"),
    ("source", "recursive", "1", "true or false"),
    ("source", "recursive", "'yes'", "true or false"),
    ("source", "loop", "0", "from 1 to"),
    ("source", "detect_every", "0", "from 1 to 10000"),
    ("source", "track", "'no'", "true or false"),
    ("source", "tracker", "3", "must be a table"),
    ("source", "loop", "-3", "from 1 to"),
    ("source", "loop", "2.5", "an integer"),
    ("source", "live", "'maybe'", "one of 'auto', 'yes', 'no'"),
    ("source", "live", "true", "one of 'auto'"),
    ("source", "reconnect_attempts", "-1", "from 0 to"),
    ("source", "reconnect_attempts", "'10'", "an integer"),
    ("source", "max_fps", "-5", "from 0 to"),
    ("source", "max_fps", "nan", "finite"),
    ("source", "max_fps", "inf", "finite"),
    ("source", "name", "5", "a string"),
    ("source", "realtime", "1", "true or false"),
    ("source", "start", "-1", "an integer from 0 to"),
    ("source", "start", "1.5", "an integer"),
    # [model]
    ("model", "name", "''", "a non-empty string"),
    ("model", "name", "['face']", "a non-empty string"),
    ("model", "path", "1", "a string"),
    ("model", "adapter", "false", "a string"),
    ("model", "labels", "5", "a list of strings or a string"),
    ("model", "labels", "[1, 2]", "a list of strings"),
    ("model", "description", "3.0", "a string"),
    ("model", "params", "'x'", "a table"),
    ("model", "params", "{ min_score = nan }", "min_score must be finite"),
    ("model", "params", "{ strides = [8, inf] }", "strides must be finite"),
    ("model", "preprocess", "'letterbox'", "must be a table"),
    ("model", "score_threshold", "2.0", "from 0 to 1 (or -1"),
    ("model", "score_threshold", "-0.5", "from 0 to 1 (or -1"),
    ("model", "score_threshold", "nan", "finite"),
    ("model", "score_threshold", "'high'", "finite number"),
    ("model", "top_k", "-1", "from 1 to"),
    ("model", "top_k", "0", "from 1 to"),
    ("model", "top_k", "1e9", "an integer"),
    # [model.preprocess]
    ("model.preprocess", "resize", "'zoom'", "one of 'letterbox', 'letterbox_topleft', 'stretch', 'crop'"),
    ("model.preprocess", "resize", "''", "one of 'letterbox'"),
    ("model.preprocess", "crop", "1.5", "> 0 and <= 1"),
    ("model.preprocess", "crop", "0", "> 0 and <= 1"),
    ("model.preprocess", "crop", "nan", "finite"),
    ("model.preprocess", "pad", "256", "an integer from 0 to 255"),
    ("model.preprocess", "pad", "1.5", "an integer"),
    ("model.preprocess", "interpolation", "'bicubic'", "one of 'auto', 'nearest', 'linear', 'cubic'"),
    ("model.preprocess", "interpolation", "3", "one of 'auto'"),
    ("model.preprocess", "color", "'CMYK'", "one of 'RGB', 'BGR', 'GRAY'"),
    ("model.preprocess", "color", "'rgb'", "one of 'RGB'"),
    ("model.preprocess", "mean", "[1.0, 2.0]", "1 or 3 values for color RGB"),
    ("model.preprocess", "mean", "[]", "1 or 3 values"),
    ("model.preprocess", "mean", "[nan, 0, 0]", "finite"),
    ("model.preprocess", "mean", "'127.5'", "a list"),
    ("model.preprocess", "scale", "[1.0, 0.0, 1.0]", "> 0"),
    ("model.preprocess", "scale", "0", "a list"),
    ("model.preprocess", "scale", "[-1.0]", "> 0"),
    ("model.preprocess", "scale", "[inf]", "finite"),
    ("model.preprocess", "scale", "[1.0, 1.0, 1.0, 1.0]", "1 or 3 values"),
    # [inference]
    ("inference", "devices", "[]", "a list of 1 to 16 items"),
    ("inference", "devices", "'CPU'", "a list"),
    ("inference", "devices", "['']", "non-empty strings"),
    ("inference", "devices", "[3]", "non-empty strings"),
    ("inference", "nireq", "-1", "from 0 to 64"),
    ("inference", "nireq", "100000", "from 0 to 64"),
    ("inference", "nireq", "'4'", "an integer"),
    ("inference", "batch", "-1", "from 0 to 256"),
    ("inference", "batch", "4096", "from 0 to 256"),
    ("inference", "batch", "1.5", "an integer"),
    ("inference", "hint", "'FAST'", "one of 'THROUGHPUT', 'LATENCY', 'CUMULATIVE_THROUGHPUT', 'NONE'"),
    ("inference", "hint", "1", "one of 'THROUGHPUT'"),
    ("inference", "streams", "-2", "from 0 to"),
    ("inference", "streams", "true", "an integer"),
    ("inference", "threads", "-1", "from 0 to"),
    ("inference", "threads", "'all'", "an integer"),
    ("inference", "cache_dir", "0", "a string"),
    ("inference", "properties", "'NUM_STREAMS=2'", "a table"),
    ("inference", "properties", "{ CPU = 4 }", "a table"),
    ("inference.properties.CPU", "NUM_STREAMS", "[2]", "a string"),
    # [pipeline]
    ("pipeline", "raw_slots", "1", "from 2 to"),
    ("pipeline", "raw_slots", "1000000", "from 2 to 1024"),
    ("pipeline", "max_frame_width", "0", "from 16 to"),
    ("pipeline", "max_frame_width", "100000", "from 16 to 16384"),
    ("pipeline", "max_frame_height", "-1080", "from 16 to"),
    ("pipeline", "max_frame_height", "'1080'", "an integer"),
    ("pipeline", "input_slots", "-1", "from 0 to"),
    ("pipeline", "input_slots", "99999", "from 0 to 1024"),
    ("pipeline", "reduced_decode", "'no'", "true or false"),
    ("pipeline", "batch_timeout_ms", "-1", "from 0 to"),
    ("pipeline", "batch_timeout_ms", "inf", "finite"),
    ("pipeline", "heartbeat_s", "0", "from 0.01 to 5"),
    ("pipeline", "heartbeat_s", "-1", "from 0.01 to 5"),
    ("pipeline", "heartbeat_s", "nan", "finite"),
    ("pipeline", "heartbeat_s", "3600", "from 0.01 to 5"),
    ("pipeline", "decoders", "-1", "from 0 to 64"),
    ("pipeline", "decoders", "1000", "from 0 to 64"),
    ("pipeline", "decode_threads", "-1", "from 0 to 64"),
    ("pipeline", "decode_threads", "100", "from 0 to 64"),
    ("pipeline", "max_restarts", "-1", "from 0 to"),
    ("pipeline", "max_restarts", "2.0", "an integer"),
    # [output]
    ("output", "dir", "''", "a non-empty string"),
    ("output", "dir", "42", "a non-empty string"),
    ("output", "jsonl", "'true'", "true or false"),
    ("output", "images", "0", "true or false"),
    ("output", "video", "'mp4'", "true or false"),
    ("output", "snapshots", "1", "true or false"),
    ("output", "video_fps", "-25", "> 0 and <= 1000"),
    ("output", "video_fps", "0", "> 0"),
    ("output", "video_fps", "nan", "finite"),
    ("output", "report", "1", "true or false"),
    ("output", "status", "'yes'", "true or false"),
    # [output.mqtt]
    ("output.mqtt", "host", "1", "a string"),
    ("output.mqtt", "port", "0", "from 1 to 65535"),
    ("output.mqtt", "port", "70000", "from 1 to 65535"),
    ("output.mqtt", "topic", "''", "a non-empty string"),
    ("output.mqtt", "topic", "'a/+/b'", "without + or # wildcards"),
    ("output.mqtt", "events_topic", "'a/#'", "without + or # wildcards"),
    ("output.mqtt", "topic", "'a/{camera}'", "must be a topic with no placeholder but {stream}"),
    # an attribute of the name
    ("output.mqtt", "topic", "'a/{stream.x}'", "must be a topic with no placeholder but {stream}"),
    ("output.mqtt", "qos", "2", "one of 0, 1"),
    ("output.mqtt", "qos", "'1'", "one of 0, 1"),
    ("output.mqtt", "client_id", "7", "a string"),
    ("output.mqtt", "clean_session", "'no'", "true or false"),
    ("output.mqtt", "username", "[]", "a string"),
    ("output.mqtt", "password", "1", "a string"),
    ("output.mqtt", "tls", "1", "true or false"),
    ("output.mqtt", "ca", "1", "a string"),
    ("output.mqtt", "cert", "1", "a string"),
    ("output.mqtt", "key", "1", "a string"),
    ("output.mqtt", "insecure", "'yes'", "true or false"),
    ("output.mqtt", "keepalive_s", "0", "from 1 to 65535"),
    ("output.mqtt", "buffer", "0", "from 1 to"),
    ("output.mqtt", "max_inflight", "-1", "from 1 to 65535"),
    ("output.mqtt", "flush_timeout_s", "nan", "finite"),
    ("output.mqtt", "flush_timeout_s", "-1", "from 0 to 20"),
    ("output", "mqtt", "'localhost'", "must be a table"),
    # [metrics]
    ("metrics", "port", "70000", "from 0 to 65535"),
    ("metrics", "port", "-1", "from 0 to 65535"),
    ("metrics", "host", "''", "a non-empty string"),
    ("metrics", "linger_s", "inf", "finite"),
    ("metrics", "linger_s", "-2", "from 0 to 3600"),
    # [cluster]
    ("cluster", "address", "'http://head:6379'", "auto\", HOST:PORT or ray://HOST:PORT"),
    ("cluster", "address", "6379", "a string"),
    ("cluster", "resource", "''", "a non-empty string"),
    ("cluster", "per_stream", "0", "> 0"),
    ("cluster", "per_stream", "nan", "finite"),
    ("cluster", "max_moves", "-1", "from 0 to 1000"),
    ("cluster", "wait_s", "0", "> 0 and <= 86400"),
    ("cluster", "engine_dir", "'runs/engines'", "an absolute path"),
    # [serve]
    ("serve", "host", "''", "a non-empty string"),
    ("serve", "port", "70000", "from 0 to 65535"),
    ("serve", "token_file", "1", "a string"),
    ("serve", "roots", "'/srv'", "a list"),
    ("serve", "schemes", "['ftp']", "each one of 'rtsp', 'rtsps', 'http', 'https', 'device'"),
    ("serve", "max_streams", "0", "from 1 to 256"),
    ("serve", "max_body_bytes", "10", "from 256 to 1048576"),
    ("serve", "view_fps", "61", "from 0 to 60"),
    ("serve", "state", "'yes'", "true or false"),
    ("output", "view_fps", "-1", "from 0 to 60"),
    # [dashboard]
    ("dashboard", "enabled", "'off'", "true or false"),
    ("dashboard", "refresh_hz", "-1", "from 0.5 to 60"),
    ("dashboard", "refresh_hz", "0", "from 0.5 to 60"),
    ("dashboard", "refresh_hz", "inf", "finite"),
    # [tracking]
    ("tracking", "enabled", "1", "true or false"),
    ("tracking", "high_score", "1.5", "from 0 to 1"),
    ("tracking", "low_score", "-0.1", "from 0 to 1"),
    ("tracking", "new_track_score", "'high'", "finite number"),
    ("tracking", "match_iou", "0", "> 0 and <= 1"),
    ("tracking", "low_match_iou", "nan", "finite"),
    ("tracking", "track_buffer", "-1", "from 0 to 100000"),
    ("tracking", "min_hits", "0", "from 1 to 1000"),
    ("tracking", "per_class", "'yes'", "true or false"),
    ("tracking", "anchor", "'top'", "one of 'bottom', 'center'"),
    ("tracking", "events", "0", "true or false"),
    ("tracking", "lines", "'x'", "a list of at most 1000 items, each a table"),
    ("tracking", "zones", "5", "a list of at most 1000 items, each a table"),
]

UNKNOWN = [   # (TOML text, where, message words)
    ("souce = 1\n", "top level", "unknown key 'souce' (did you mean 'source'?)"),
    ("foo = 1\n", "top level", "unknown key 'foo' (known: source, sources, model"),
    ("[source]\nurii = 'x'\n", "[source]", "unknown key 'urii' (did you mean 'uri'?)"),
    ("[model]\nlabel = []\n", "[model]", "unknown key 'label' (did you mean 'labels'?)"),
    ("[model.preprocess]\nresise = 'stretch'\n", "[model.preprocess]", "unknown key 'resise' (did you mean 'resize'?)"),
    ("[inference]\nnreq = 2\n", "[inference]", "unknown key 'nreq' (did you mean 'nireq'?)"),
    ("[pipeline]\nheartbeat = 1\n", "[pipeline]", "unknown key 'heartbeat' (did you mean 'heartbeat_s'?)"),
    ("[output]\nvideo_fsp = 1\n", "[output]", "unknown key 'video_fsp' (did you mean 'video_fps'?)"),
    ("[dashboard]\nrefresh = 1\n", "[dashboard]", "unknown key 'refresh' (did you mean 'refresh_hz'?)"),
    ("[metrics]\nprot = 9464\n", "[metrics]", "unknown key 'prot' (did you mean 'port'?)"),
    ("[output.mqtt]\nhots = 'h'\n", "[output.mqtt]", "unknown key 'hots' (did you mean 'host'?)"),
    ("[sauce]\nuri = 'x'\n", "top level", "unknown key 'sauce' (did you mean 'source'?)"),
    ("source = 'data'\n", "[source]", "must be a table, not 'data'"),
    ("[[inference]]\nbatch = 1\n", "[inference]", "must be a table"),
]

SOURCES = [   # [[sources]]: (TOML text, message words)
    ("sources = 1\n", "top level sources must be a list of at most 256 items, each a table, not 1"),
    ("[[sources]]\nuri = 'data/samples'\nlop = 2\n", "[[sources]] #1 unknown key 'lop' (did you mean 'loop'?)"),
    ("[[sources]]\nuri = 'data/samples'\n[[sources]]\nuri = 'x'\nloop = 0\n",
     "[[sources]] #2 loop must be an integer from 1 to 1000000, not 0"),
    ("[[sources]]\nuri = 'data/samples'\nname = 'a'\n[[sources]]\nuri = 'data/mnist_samples'\nname = 'a'\n",
     "[[sources]] name 'a': used twice"),
    ("[[sources]]\nuri = 'data/nothing/*.mp4'\n", "/data/nothing/*.mp4': the pattern matches no file"),
    ("[source]\nloop = -1\n[[sources]]\nuri = 'data/samples'\n", "[source] loop must be an integer from 1"),
    ("[[sources]]\nuri = 'a'\nrealtime = 'yes'\n", "[[sources]] #1 realtime must be true or false, not 'yes'"),
]

ACROSS = [   # rules between keys or sections: (TOML text, message words)
    ("[output.mqtt]\nhost = 'h'\nclean_session = false\n", "[output.mqtt] clean_session = false needs a client_id"),
    ("[output.mqtt]\nhost = 'h'\ntls = true\nca = '/nonexistent/ca.pem'\n",
     "[output.mqtt] ca: no such file /nonexistent/ca.pem"),
    ("[inference.properties.GPU]\nNUM_STREAMS = 2\n",
     "[inference.properties.GPU] names no device of [inference] devices (CPU)"),
    ("[inference]\ndevices = ['CPU', 'CPU']\n[pipeline]\ninput_slots = 1\n",
     "[pipeline] input_slots = 1 leaves some of the 2 inference workers"),
    ("[tracking]\nlow_score = 0.6\nhigh_score = 0.5\n", "[tracking] low_score = 0.6 is above high_score = 0.5"),
    ("[tracking]\nenabled = true\n[output]\njsonl = false\n", "[tracking] enabled = true needs [output] jsonl = true"),
    ("[[sources]]\nuri = 'data/samples'\n[[sources]]\nuri = 'data/clip.mp4'\ndetect_every = 5\n",
     "[[sources]] #2 detect_every = 5 needs [tracking] enabled = true"),
    ("[output]\nsnapshots = true\n", "[output] snapshots = true needs [tracking] enabled = true"),
]


def _toml(section: str, key: str, value: str) -> str:
    return f"[{section}]\n{key} = {value}\n"


def _refused(tmp_path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = str(err.value)
    assert err.value.exit_code == 2                   # what `ovstream run` exits with
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"{path}: "), line
    assert sorted(os.listdir(tmp_path)) == before, "the loader created files"
    return line


@pytest.mark.parametrize("section, key, value, words", MALFORMED,
                         ids=[f"{s}.{k}={v}" for s, k, v, _ in MALFORMED])
def test_malformed_value_is_one_line_naming_file_section_key_and_what_is_allowed(tmp_path, section, key, value,
                                                                                 words):
    line = _refused(tmp_path, _toml(section, key, value))
    named = (f"[{section}] {key} must be", f"[{section}] {key} needs", f"[{section}.{key}] ")
    assert any(words in line for words in named), line
    assert words in line, line
    assert ", not " in line or "finite (no nan or inf)" in line, f"the message does not repeat the value: {line}"


@pytest.mark.parametrize("text, where, words", UNKNOWN, ids=[t.split("\n")[0] for t, *_ in UNKNOWN])
def test_unknown_key_or_section_shape(tmp_path, text, where, words):
    line = _refused(tmp_path, text)
    assert f"{where} {words}" in line, line


@pytest.mark.parametrize("text, words", SOURCES, ids=["not-a-list", "near-miss", "range", "same-name", "empty-glob",
                                                     "inherited-from-source", "realtime"])
def test_sources_tables(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("text, words", ACROSS, ids=["mqtt-session", "mqtt-ca", "properties-device",
                                                    "input-slots-workers", "tracking-scores", "tracking-jsonl",
                                                    "detect-every-tracking", "snapshots-tracking"])
def test_rules_across_sections(tmp_path, text, words):
    assert words in _refused(tmp_path, text)


def test_properties_of_a_device_inside_multi_are_accepted():
    cfg = RunConfig.from_dict({"inference": {"devices": ["MULTI:CPU,GPU.1"], "properties": {"GPU.1": {"X": 1}}}})
    assert cfg.inference.properties == {"GPU.1": {"X": 1}}


def test_lists_of_tables_are_named_with_their_position():
    """``[[name]]`` tables (a list of sections) get their number in the message."""
    from engine.config import Section, SourceConfig, explain

    class Streams(Section):
        streams: list[SourceConfig] = []

    data = {"streams": [{"uri": "a"}, {"uri": "b", "loop": 0}]}
    with pytest.raises(ValidationError) as err:
        Streams.model_validate(data, strict=True)
    assert explain(err.value, Streams, data, "c.toml") == \
        "c.toml: [[streams]] #2 loop must be an integer from 1 to 1000000, not 0"
    data = {"streams": [{"urii": "a"}]}
    with pytest.raises(ValidationError) as err:
        Streams.model_validate(data, strict=True)
    assert explain(err.value, Streams, data, "c.toml") == \
        "c.toml: [[streams]] #1 unknown key 'urii' (did you mean 'uri'?)"


def test_every_key_of_every_section_has_malformed_values():
    """Adding a key to the config adds a row here (or this test names the key that has none)."""
    covered = {(section.split(".properties")[0], key) for section, key, *_ in MALFORMED}
    covered |= {("", "sources")} if SOURCES else set()
    missing = []

    def walk(model: type, prefix: str) -> None:
        for name, info in model.model_fields.items():
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                if prefix:
                    if (prefix, name) not in covered:
                        missing.append(f"{prefix}.{name}")
                walk(sub, f"{prefix}.{name}" if prefix else name)
            elif (prefix, name) not in covered:
                missing.append(f"{prefix}.{name}")
    walk(RunConfig, "")
    assert not missing, f"keys without a malformed value in MALFORMED: {missing}"
    assert len(MALFORMED) + len(UNKNOWN) + len(ACROSS) >= 60


@pytest.mark.parametrize("content, words", [
    ("[source]\nuri = 'x'\n".encode("utf-16"), "UTF-16"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
    (b"[source]\nuri = '\xff\xfe caf\xe9'\n", "not UTF-8"),
    (b"[source\nuri = 'x'\n", "not valid TOML"),
], ids=["utf16", "binary", "latin1", "not-toml"])
def test_config_file_that_is_not_utf8_toml(tmp_path, content, words):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_bad_command_line_value_is_named_as_such():
    with pytest.raises(ConfigError,
                       match=r"^command line: \[inference\] batch must be an integer from 0 to 256, not 4096$"):
        load_config(overrides={"inference": {"batch": 4096}})


def test_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def test_default_config_resolves_the_bundled_coco_ssd():
    cfg = load_config()
    assert cfg.model.name == "ssd_mobilenet_v2_coco" and cfg.model.adapter == "tf_od_api"
    assert cfg.model.path.endswith("mobilenet_ssd_v2_coco_quant_postprocess.tflite")
    assert cfg.model.preprocess.resize == "stretch"
    assert cfg.model.labels[1] == "person" and cfg.model.labels[13] == "stop sign"   # index = COCO id
    assert cfg.model.params["class_offset"] == 1 and cfg.inference.devices == ["CPU"]


def test_config_round_trips_through_json_to_the_stages():
    cfg = load_config(overrides={"inference": {"properties": {"CPU": {"NUM_STREAMS": 2}}, "batch": 2}})
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())), origin="stage context")
    assert again == cfg and again.pipeline.heartbeat_s == cfg.pipeline.heartbeat_s


def test_one_preprocess_key_overrides_only_that_key_of_the_registry_entry():
    cfg = load_config(overrides={"model": {"name": "face", "preprocess": {"color": "BGR"}}})
    assert cfg.model.preprocess.color == "BGR" and cfg.model.preprocess.mean == [127.5] * 3


def test_preprocess_override_that_contradicts_the_registry_names_the_key():
    with pytest.raises(ConfigError, match=r"\[model.preprocess\] mean needs 1 value for color GRAY"):
        load_config(overrides={"model": {"name": "face", "preprocess": {"color": "GRAY"}}})


def test_an_int_is_a_number_and_python_callers_are_not_strict():
    cfg = RunConfig.from_dict({"pipeline": {"heartbeat_s": 1}, "model": {"score_threshold": -1}})
    assert cfg.pipeline.heartbeat_s == 1.0 and isinstance(cfg.pipeline.heartbeat_s, float)


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
uri = "data/samples"
[[sources]]
uri = "data/samples"
loop = 1
[[sources]]
uri = "rtsp://127.0.0.1:8554/live/cam1?x=1"
[[sources]]
uri = "0"
realtime = true
""")
    cfg = load_config(path)
    assert [(s.name, s.loop) for s in cfg.sources] == [("a", 3), ("b", 3), ("samples", 3), ("samples-2", 1),
                                                       ("cam1", 3), ("cam0", 3)]
    assert cfg.sources[-1].realtime and cfg.sources[0].uri.endswith("a.mp4")
    assert [s.name for s in load_config().sources] == ["samples", "clip"]      # the default: two streams


def test_one_property_for_each_derived_fact():
    cfg = RunConfig()
    assert not cfg.output.annotated
    for images, video in ((True, False), (False, True), (True, True)):
        cfg.output.images, cfg.output.video = images, video
        assert cfg.output.annotated
    assert [s.uri for s in cfg.streams] == [cfg.source.uri]                 # not resolved: the one [source]
    loaded = load_config()
    assert loaded.streams == loaded.sources and loaded.sources              # resolved: never empty
