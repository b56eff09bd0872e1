"""The one result type (FrameResult), the slot ranges of streams added and removed at run time,
and the API sink's backpressure."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import zmq

from engine.config import RunConfig, SourceConfig
from engine.core.errors import ConfigError
from engine.core.results import Classification, Detection, FrameResult, read_results
from engine.io.sinks import ApiSink, JsonlSink
from engine.io.streams import plan
from engine.protocol.messages import RecordMsg, decode

# lines as the postprocessor writes them (keys in its order, ints where the adapter gave ints)
LINES = [
    '{"stream":"cam","frame_id":0,"source":"a.jpg","frame_index":0,"status":"ok","device":"CPU",'
    '"worker":"inference-0","detections":[{"label":"face","class_id":0,"score":0.93,"box":[1.5,2,30.25,40],'
    '"keypoints":[[3,4],[5.5,6]]}],"latency_ms":{"decode":1.2,"end_to_end":9.75}}',
    '{"stream":"cam","frame_id":1,"source":"b.jpg","frame_index":0,"status":"ok","device":"CPU",'
    '"worker":"inference-1","classes":[{"label":"tabby","class_id":281,"score":0.5}],"latency_ms":{}}',
    '{"stream":"cam","frame_id":2,"source":"c.jpg","frame_index":0,"status":"error","stage":"decode",'
    '"error":"unreadable: ü"}',
    '{"stream":"cam","frame_id":3,"source":"d.jpg","frame_index":7,"status":"ok","device":"GPU",'
    '"worker":"inference-0","detections":[],"latency_ms":{"inference":3.0}}',
]


def test_a_line_read_and_written_again_is_the_same_text():
    for line in LINES:
        assert FrameResult.from_json(line).to_json() == line


def test_fields_are_typed():
    det, cls, err = (FrameResult.from_json(line) for line in LINES[:3])
    assert det.ok and det.detections == (Detection("face", 0, 0.93, (1.5, 2, 30.25, 40), ((3, 4), (5.5, 6))),)
    assert det.classes is None and det.latency_ms["end_to_end"] == 9.75
    assert cls.classes == (Classification("tabby", 281, 0.5),) and cls.detections is None
    assert not err.ok and (err.stage, err.error) == ("decode", "unreadable: ü") and err.detections is None


def test_scaled_moves_boxes_and_keypoints_only():
    """What the annotating sinks draw on a stored frame smaller than the original (the postprocessor's
    ``drawable``): boxes and keypoints scaled, everything else as it was."""
    det, cls, err = (FrameResult.from_json(line) for line in LINES[:3])
    half = det.scaled(0.5, 0.25)
    assert half.detections == (Detection("face", 0, 0.93, (0.75, 0.5, 15.125, 10.0), ((1.5, 1.0), (2.75, 1.5))),)
    assert half.to_dict() == {**det.to_dict(), "detections": [d.to_dict() for d in half.detections]}
    assert cls.scaled(0.5, 0.5) == cls and err.scaled(0.5, 0.5) == err
    plain = FrameResult("s", 0, "a", 0, detections=(Detection("x", 1, 0.5, (2, 4, 6, 8)),))
    assert plain.scaled(0.5, 0.5).detections[0].keypoints is None


def test_numpy_values_become_plain_numbers():
    det = Detection.from_dict({"label": "x", "class_id": np.int64(2), "score": np.float32(0.5),
                               "box": np.array([1.0, 2.0, 3.0, 4.0])[...].tolist()})
    result = FrameResult("s", 0, "a", 0, detections=(det,))
    assert FrameResult.from_json(result.to_json()) == result
    assert type(det.class_id) is int and type(det.score) is float


@pytest.mark.parametrize("text", ['{"frame_id": 1}', '[1, 2]', '{"stream": "s", "frame_id": "x", "source": "a", '
                                  '"frame_index": 0}', '{"stream":"s","frame_id":0,"source":"a","frame_index":0,'
                                  '"detections":[{"label":"x"}]}'])
def test_what_is_not_a_result_is_a_value_error(text):
    with pytest.raises(ValueError, match="not a frame result"):
        FrameResult.from_json(text)


def test_read_results_skips_a_torn_line_unless_strict(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(LINES) + '\n{"stream":"cam","fra', encoding="utf-8")
    assert [r.frame_id for r in read_results(path)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="results.jsonl:5"):
        list(read_results(path, strict=True))


def test_the_jsonl_sink_writes_to_json_lines(tmp_path):
    sink = JsonlSink(tmp_path / "results.jsonl")
    for line in LINES:
        sink.write(FrameResult.from_json(line))
    sink.close()
    assert (tmp_path / "results.jsonl").read_text(encoding="utf-8").splitlines() == LINES


# ---- streams added and removed at run time -------------------------------------------------------

def _cfg(n: int, decoders: int = 2) -> RunConfig:
    cfg = RunConfig(sources=[SourceConfig(uri=f"clip{i}.mp4", name=f"s{i}") for i in range(n)])
    cfg.pipeline.decoders = decoders
    return cfg


def test_added_streams_take_spare_ranges_and_the_least_loaded_decoder():
    layout = plan(_cfg(3), slots_per_stream=4, spare=2)
    assert layout.raw_slots == 20 and layout.spare == [(12, 16), (16, 20)]
    added = layout.add("new", "x.mp4", live=False)
    assert (added.sid, added.slot_lo, added.slot_hi) == (3, 12, 16)
    assert added.decoder == 1                     # decoder-0 had two streams, decoder-1 one
    layout.add("new2", "y.mp4", live=False)
    with pytest.raises(ConfigError, match="no room for another stream"):
        layout.add("new3", "z.mp4", live=False)


def test_a_removed_stream_keeps_its_index_and_frees_its_range_only_when_released():
    layout = plan(_cfg(2), slots_per_stream=3, spare=0)
    layout.remove(0)
    assert layout.streams[0].removed and layout.open_streams(0) == []
    with pytest.raises(ConfigError):              # its slots may still be in use downstream
        layout.add("new", "x.mp4", live=False)
    layout.release(0)
    layout.release(0)                             # twice: the range is not handed out twice
    assert layout.spare == [(0, 3)]
    again = layout.add("new", "x.mp4", live=False)
    assert (again.sid, again.slot_lo, again.slot_hi) == (2, 0, 3)
    assert type(layout).from_dict(layout.to_dict()) == layout


# ---- the API sink --------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_api_sink_holds_records_while_the_consumer_is_behind_and_ends_with_a_marker(tmp_path):
    context = zmq.Context.instance()
    endpoint = f"ipc://{tmp_path / uuid.uuid4().hex[:8]}.sock"
    consumer = context.socket(zmq.PULL)
    consumer.setsockopt(zmq.RCVHWM, 4)
    consumer.bind(endpoint)
    sink = ApiSink(endpoint, limit=8)
    try:
        results = [FrameResult("s", i, "a", i, detections=()) for i in range(60)]
        for result in results:
            sink.write(result, None)
        assert sink.backlogged and sink.pending > 8   # nothing is dropped: it waits in the FIFO
        sink.close(streams=1)
        got = []
        while len(got) < 61:
            if consumer.poll(1000):
                got.append(decode(consumer.recv()))
            sink.poll()
        assert [m.record for m in got[:60]] == [r.to_dict() for r in results]
        assert all(isinstance(m, RecordMsg) for m in got)
        assert got[60].end and got[60].record == {"streams": 1}
        assert not sink.backlogged and sink.pending == 0
    finally:
        sink.shutdown()
        consumer.close(0)
