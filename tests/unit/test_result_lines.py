"""results.jsonl lines pinned byte for byte: adapter answers built into a :class:`FrameResult` as the
postprocessor builds them, written by :meth:`FrameResult.to_json` and the JSON lines sink.

The expected strings were captured from the code before results became one type end to end (when the
adapters returned dicts and the sinks took dicts). They must not change: key order, float formatting,
which keys appear when, escapes."""
from __future__ import annotations

import numpy as np
import pytest

from engine.config import ModelConfig
from engine.core.geometry import Geometry
from engine.core.results import FrameResult
from engine.io.sinks import JsonlSink
from engine.model.adapters import Adapter, create_adapter
from tests.unit.test_adapters import COCO_LABELS, face_outputs, registry_model, tf_outputs
from tests.unit.test_anchor_free import _candidates

LETTERBOX = Geometry.plan(640, 480, 192, 192, "letterbox")
STRETCH = Geometry.plan(640, 480, 300, 300, "stretch")
LATENCY = {"decode": 1.25, "preprocess": 0.5, "queue": 3.0, "inference": 12.345, "postprocess": 0.1,
           "end_to_end": 17.195}

KEYPOINTS = (
    '{"stream":"cam","frame_id":7,"source":"/data/clip.mp4","frame_index":7,"status":"ok",'
    '"device":"CPU","worker":"inference-0","detections":[{"label":"face","class_id":0,'
    '"score":0.9933071490757153,"box":[374.6666564941406,97.33332824707031,502.6667175292969,'
    '257.33331298828125],"keypoints":[[406.6666564941406,193.3333282470703],[470.66668701171875,'
    '225.33334350585938],[406.6666564941406,193.3333282470703],[406.6666564941406,'
    '193.3333282470703],[406.6666564941406,193.3333282470703],[406.6666564941406,'
    '193.3333282470703]]},{"label":"face","class_id":0,"score":0.8807970779778823,'
    '"box":[43.33333969116211,0.0,109.99999237060547,40.0],"keypoints":[[73.33332824707031,'
    '-6.666666507720947],[73.33332824707031,-6.666666507720947],[73.33332824707031,'
    '-6.666666507720947],[73.33332824707031,-6.666666507720947],[73.33332824707031,'
    '-6.666666507720947],[73.33332824707031,-6.666666507720947]]}],"latency_ms":{"decode":1.25,'
    '"preprocess":0.5,"queue":3.0,"inference":12.345,"postprocess":0.1,"end_to_end":17.195}}'
)
DETECTIONS = (
    '{"stream":"door","frame_id":0,"source":"/data/imgs/a b.jpg","frame_index":0,"status":"ok",'
    '"device":"GPU.0","worker":"inference-1","detections":[{"label":"person","class_id":1,'
    '"score":0.8999999761581421,"box":[64.0,96.0,320.0,288.0]},{"label":"dog","class_id":18,'
    '"score":0.75,"box":[192.0,144.0,576.0,456.0]}],"latency_ms":{"inference":4.0}}'
)
NO_DETECTIONS = (
    '{"stream":"door","frame_id":1,"source":"/data/imgs/b.jpg","frame_index":0,"status":"ok",'
    '"device":"CPU","worker":"inference-0","detections":[],"latency_ms":{}}'
)
CLASSIFICATION = (
    '{"stream":"cam","frame_id":12,"source":"0","frame_index":12,"status":"ok","device":"CPU",'
    '"worker":"inference-0","classes":[{"label":"dog","class_id":1,"score":0.5320711503963734},'
    '{"label":"\u65e5\u672c","class_id":3,"score":0.3227174658639722},{"label":"caf\xe9","class_id":0,'
    '"score":0.1187211209983021}],"latency_ms":{"decode":1.25,"preprocess":0.5,"queue":3.0,'
    '"inference":12.345,"postprocess":0.1,"end_to_end":17.195}}'
)
TF_OD_API = (
    '{"stream":"s","frame_id":2,"source":"/v.mp4","frame_index":2,"status":"ok","device":"CPU",'
    '"worker":"w","detections":[{"label":"person","class_id":1,"score":0.9200000166893005,'
    '"box":[64.0,120.0,320.0,360.0]},{"label":"dog","class_id":18,"score":0.6100000143051147,'
    '"box":[320.0,0.0,640.0,240.0]}],"latency_ms":{"end_to_end":0.001}}'
)
YOLO = (
    '{"stream":"s","frame_id":3,"source":"/v.mp4","frame_index":3,"status":"ok","device":"CPU",'
    '"worker":"w","detections":[{"label":"b","class_id":1,"score":0.8999999761581421,"box":[22.0,'
    '27.0,42.0,37.0]},{"label":"c","class_id":2,"score":0.699999988079071,"box":[22.0,27.0,42.0,'
    '37.0]}],"latency_ms":{}}'
)
ERROR = (
    '{"stream":"cam","frame_id":3,"source":"/data/\xfcn\xef\udcff.jpg","frame_index":0,"status":"error",'
    '"stage":"decode","error":"cannot decode \\"x\\"\\n: bad"}'
)
POSTPROCESS_ERROR = (
    '{"stream":"s","frame_id":4,"source":"rtsp://h/x?a=1","frame_index":4,"status":"error",'
    '"stage":"postprocess","error":"ValueError: boom"}'
)
# The error line as results.jsonl holds it: UTF-8, the undecodable name byte as a \udcff escape.
ERROR_BYTES = (b'{"stream":"cam","frame_id":3,"source":"/data/\xc3\xbcn\xc3\xaf\\udcff.jpg","frame_index":0,'
               b'"status":"error","stage":"decode","error":"cannot decode \\"x\\"\\n: bad"}\n')


def built(adapter: Adapter, outputs: dict[str, np.ndarray], geometry: Geometry, **fields) -> FrameResult:
    """One frame's result as workers/postprocessor.py builds it from the adapter's answer."""
    return FrameResult(**fields, **adapter.answer(adapter.decode(outputs, geometry)))


def _results() -> dict[str, FrameResult]:
    face = create_adapter(registry_model("face"))
    values = [9.6, -4.8, 38.4, 48.0, 0.0, 0.0, 19.2, 9.6]
    ssd = create_adapter(ModelConfig(name="ssd", adapter="ssd_detection_output", labels=COCO_LABELS))
    rows = np.array([[[[0, 1, 0.9, 0.1, 0.2, 0.5, 0.6], [0, 18, 0.75, 0.3, 0.3, 0.9, 0.95],
                       [0, 3, 0.2, 0, 0, 1, 1], [-1, 0, 0, 0, 0, 0, 0]]]], np.float32)
    classifier = create_adapter(ModelConfig(name="c", adapter="classification", labels=["café", "dog", "cat", "日本"],
                                            top_k=3))
    tf = create_adapter(ModelConfig(name="tf", adapter="tf_od_api", labels=COCO_LABELS))
    tf_names = ["StatefulPartitionedCall:1", "StatefulPartitionedCall:2", "StatefulPartitionedCall:4", "Id"]
    yolo = create_adapter(ModelConfig(name="y", adapter="yolo", labels=["a", "b", "c"]))
    return {
        KEYPOINTS: built(face, face_outputs({(20, 30): (5.0, values), (5, 5): (2.0, [1.0, 2.0, 20.0, 24.0])}),
                         LETTERBOX, stream="cam", frame_id=7, source="/data/clip.mp4", frame_index=7, device="CPU",
                         worker="inference-0", latency_ms=LATENCY),
        DETECTIONS: built(ssd, {"out": rows}, STRETCH, stream="door", frame_id=0, source="/data/imgs/a b.jpg",
                          frame_index=0, device="GPU.0", worker="inference-1", latency_ms={"inference": 4.0}),
        NO_DETECTIONS: built(ssd, {"out": rows[..., :0, :]}, STRETCH, stream="door", frame_id=1,
                             source="/data/imgs/b.jpg", frame_index=0, device="CPU", worker="inference-0",
                             latency_ms={}),
        CLASSIFICATION: built(classifier, {"logits": np.array([[0.5, 2.0, -1.0, 1.5]], np.float32)}, STRETCH,
                              stream="cam", frame_id=12, source="0", frame_index=12, device="CPU",
                              worker="inference-0", latency_ms=LATENCY),
        TF_OD_API: built(tf, tf_outputs(tf_names), STRETCH, stream="s", frame_id=2, source="/v.mp4", frame_index=2,
                         device="CPU", worker="w", latency_ms={"end_to_end": 0.001}),
        YOLO: built(yolo, {"out": _candidates().T[None]}, Geometry.plan(64, 64, 64, 64, "letterbox"), stream="s",
                    frame_id=3, source="/v.mp4", frame_index=3, device="CPU", worker="w", latency_ms={}),
        ERROR: FrameResult.failed("cam", 3, "/data/ünï\udcff.jpg", 0, "decode", 'cannot decode "x"\n: bad'),
        POSTPROCESS_ERROR: FrameResult.failed("s", 4, "rtsp://h/x?a=1", 4, "postprocess", "ValueError: boom"),
    }


RESULTS = _results()


@pytest.mark.parametrize("expected", list(RESULTS), ids=["keypoints", "detections", "no_detections",
                                                         "classification", "tf_od_api", "yolo", "error",
                                                         "postprocess_error"])
def test_each_line_is_what_it_was(expected: str) -> None:
    result = RESULTS[expected]
    assert result.to_json() == expected
    assert FrameResult.from_json(expected) == result          # read back: the same result
    assert FrameResult.from_json(expected).to_json() == expected


def test_the_jsonl_sink_writes_exactly_those_bytes(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    sink = JsonlSink(path)
    for result in RESULTS.values():
        sink.write(result, None)
    sink.close()
    data = path.read_bytes()
    assert data == b"".join(line.encode("utf-8", "backslashreplace") + b"\n" for line in RESULTS)
    assert ERROR_BYTES in data
