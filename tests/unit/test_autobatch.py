"""``[inference] batch = 0``: several frames per request when batches fill without a long wait
(every source a file read as fast as it goes, or enough cameras) and the model's graph takes a
batch; else one."""
from __future__ import annotations

from engine.config import load_config
from engine.control import preflight as checks
from engine.control.preflight import auto_batch, files_only, preflight
from engine.model.prepare import AUTO_BATCH, LIVE_BATCH_STREAMS


def _cfg(tmp_path, model: str, **source):
    return load_config(overrides={"model": {"name": model}, "sources": [{"uri": "data/samples", **source}],
                                  "inference": {"batch": 0, "cache_dir": str(tmp_path / "cache")},
                                  "output": {"dir": str(tmp_path / "out")}})


def test_files_take_the_auto_batch_live_or_paced_sources_take_one(tmp_path):
    assert files_only(_cfg(tmp_path, "face"))
    assert not files_only(_cfg(tmp_path, "face", realtime=True))     # paced like a camera: latency counts
    assert not files_only(_cfg(tmp_path, "face", max_fps=15))        # paced by the config
    assert not files_only(_cfg(tmp_path, "face", live="yes"))        # a folder a camera fills
    assert not files_only(load_config(overrides={"sources": [{"uri": "rtsp://127.0.0.1:1/x"}]}))


def _cameras(count: int):
    return load_config(overrides={"sources": [{"uri": f"rtsp://127.0.0.1:1/cam{i}"} for i in range(count)]})


def test_enough_cameras_fill_a_batch_a_few_do_not():
    assert auto_batch(_cameras(LIVE_BATCH_STREAMS)) == AUTO_BATCH         # batched across cameras
    assert auto_batch(_cameras(LIVE_BATCH_STREAMS - 1)) == 1              # a batch would wait half empty
    assert auto_batch(_cameras(LIVE_BATCH_STREAMS), streams_may_join=True) == 1


def _no_model_reads(monkeypatch) -> None:
    """From here on, reading a model file fails the test: answers must come from the cache."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was read again instead of taken from the cache")
    monkeypatch.setattr(checks, "read_model", refuse)


def test_a_graph_that_takes_a_batch_gets_it_and_the_cache_remembers(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "face")
    assert preflight(cfg)[1] == AUTO_BATCH
    _no_model_reads(monkeypatch)
    assert preflight(cfg)[1] == AUTO_BATCH                          # from the cache's entry
    monkeypatch.undo()
    assert preflight(_cfg(tmp_path, "face", realtime=True))[1] == 1
    assert preflight(cfg, streams_may_join=True)[1] == 1           # a library pipeline may add a camera
    cameras = _cfg(tmp_path, "face")
    cameras.sources = [cameras.sources[0].model_copy(update={"name": f"cam{i}", "realtime": True})
                       for i in range(LIVE_BATCH_STREAMS)]
    assert preflight(cameras)[1] == AUTO_BATCH                      # paced, but enough of them
    cameras.sources.pop()
    assert preflight(cameras)[1] == 1


def test_a_graph_that_fixes_its_batch_runs_one_frame_per_request(tmp_path, monkeypatch):
    """The SSD's TFLite graph hard-codes batch 1 in a Reshape: auto falls back to 1 instead of
    failing as an explicit ``batch = 4`` does; the second start knows it from the cache."""
    cfg = _cfg(tmp_path, "ssd_mobilenet_v2_coco")
    assert preflight(cfg)[1] == 1
    _no_model_reads(monkeypatch)
    assert preflight(cfg)[1] == 1                                   # the cache knows the graph fixes it
