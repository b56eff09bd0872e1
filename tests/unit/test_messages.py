"""Messages: one schema for both ends, bounded and strict decoding."""
from __future__ import annotations

from dataclasses import fields

import msgpack
import numpy as np
import pytest

from engine.io.streams import StreamSpec
from engine.protocol import messages
from engine.protocol.apilink import API_COMMANDS, API_REPLIES
from engine.protocol.messages import (
    MAX_HEADER_BYTES,
    AckMsg,
    AddSourceMsg,
    AddStreamMsg,
    BatchMsg,
    CloseStreamMsg,
    CreditMsg,
    DecoderDownMsg,
    DecoderFencedMsg,
    DrainedMsg,
    EndStreamMsg,
    ErrorMsg,
    FrameMsg,
    FrameRef,
    Message,
    MessageError,
    OpenStreamMsg,
    OutcomeMsg,
    RemoveSourceMsg,
    RequestDoneMsg,
    RequestRefusedMsg,
    ResultMsg,
    SeenMsg,
    SnapshotMsg,
    StartedMsg,
    StartMsg,
    StopMsg,
    StopRunMsg,
    StreamAddedMsg,
    StreamClosedMsg,
    StreamFailedMsg,
    StreamFields,
    WorkerDownMsg,
    decode,
    decode_result,
    encode_result,
)


def _ref(i: int = 7) -> FrameRef:
    return FrameRef(i, "data/x.jpg", 0, 3, 480, 640, 480, 640, [0.3, 0.3, 0.0, 24.0], {"src": 1, "dec": 2})


@pytest.mark.parametrize("msg", [
    FrameMsg(_ref()),
    BatchMsg(2, [_ref(1), _ref(2)], generation=3),
    CreditMsg("inference-0@7", 4),
    ErrorMsg(_ref(), "decode", "truncated JPEG: data/x.jpg"),
    AckMsg([1, 2, 3], [4], finished=True),
    StartMsg(2),
    StopMsg(),
    WorkerDownMsg("inference-1@4242", 1),
    DecoderDownMsg(1, 3),
    DecoderFencedMsg(1, {"0": 17, "3": 0}),
    AddStreamMsg(4, "cam", "rtsp://cam/1", True, 1, 12, 18),
    StreamAddedMsg(4),
    OpenStreamMsg(4, "cam", "rtsp://cam/1", True, 1, 12, 18, {"uri": "rtsp://cam/1", "loop": 1}),
    StreamFailedMsg(4, "cannot open rtsp://cam/1"),
    CloseStreamMsg(4),
    StreamClosedMsg(4),
    EndStreamMsg(4),
    StopRunMsg(),
    SeenMsg({"cam": 17, "coco": 0}),
    DrainedMsg(3),
    AddSourceMsg(1, {"uri": "rtsp://cam/1", "name": "cam", "loop": 2, "max_fps": 12.5}),
    RemoveSourceMsg(2, "cam"),
    StartedMsg(["coco", "cam"]),
    SnapshotMsg({"state": "running", "totals": {"avg_fps": 41.5}, "streams": [{"name": "coco"}]}),
    RequestDoneMsg(1, "cam"),
    RequestRefusedMsg(2, "no open stream named 'cam' (open: none)"),
    OutcomeMsg(0, "", {"state": "finished", "restarts": {}}),
    OutcomeMsg(2, "model 'nope' not found", usage=True, error="ModelError"),
])
def test_round_trip(msg):
    assert decode(msg.encode()) == msg


@pytest.mark.parametrize("data, reason", [
    (b"", "undecodable"),
    (msgpack.packb({"t": "frame", "frame": [1, "a"]}), "12-item list"),
    (msgpack.packb({"t": "nope"}), "unknown type"),
    (msgpack.packb([1, 2, 3]), "not a map"),
    (msgpack.packb({"t": "credit", "worker": "w"}), "incomplete"),
    (msgpack.packb({"t": "credit", "worker": "w", "credits": 1, "evil": 1}), "unknown fields"),
    (FrameMsg(_ref()).encode()[:-3], "undecodable"),
    (b"\xdb\xff\xff\xff\xff" + b"x" * 10, "undecodable"),        # str32 claiming 4 GiB
    (msgpack.packb({"t": "eos", "total": "many"}), "field 'total' is not int"),
    (msgpack.packb({"t": "release", "slots": [1, "2"]}), "field 'slots' is not list"),
    (msgpack.packb({"t": "frame", "frame": [1, "a", 0, 0, 1, 1, 1, 1, [], {"x": "y"}, 0, 0]}), "wrong field types"),
    (msgpack.packb({"t": "frame", "frame": [1, "a", 0, 0, 1, 1, 1, 1, [], {}, "cam", 0]}), "wrong field types"),
    (msgpack.packb({"t": "control", "command": "stop", "arg": ""}), "unknown type"),    # the old untyped command
    (msgpack.packb({"t": "stop", "command": "stop"}), "unknown fields"),
    (msgpack.packb({"t": "worker_down"}), "incomplete"),
    (msgpack.packb({"t": "decoder_down", "decoder": "1", "epoch": 2}), "field 'decoder' is not int"),
    (msgpack.packb({"t": "decoder_fenced", "decoder": 1, "next_ids": {"0": "9"}}), "'next_ids' is not dict"),
    (msgpack.packb({"t": "decoder_fenced", "decoder": 1, "next_ids": {"0": True}}), "'next_ids' is not dict"),
    (msgpack.packb({"t": "decoder_fenced", "decoder": 1, "next_ids": [9]}), "'next_ids' is not dict"),
    (msgpack.packb({"t": "close_stream", "stream": True}), "field 'stream' is not int"),
    (msgpack.packb({"t": "add_stream", "sid": 1, "name": "a", "uri": "x", "live": 0, "decoder": 0, "slot_lo": 0,
                    "slot_hi": 3}), "field 'live' is not bool"),
    (msgpack.packb({"t": "open_stream", "sid": 1, "name": "a", "uri": "x", "live": False, "decoder": 0,
                    "slot_lo": 0, "slot_hi": 3, "source": "x"}), "field 'source' is not dict"),
    # the library link: the old untyped message, and each new type's fields checked like the rest
    (msgpack.packb({"t": "api", "kind": "stop", "arg": {}, "request": 0}), "unknown type"),
    (msgpack.packb({"t": "stop_run", "kind": "stop"}), "unknown fields"),
    (msgpack.packb({"t": "seen", "marks": {"cam": "17"}}), "field 'marks' is not dict"),
    (msgpack.packb({"t": "seen", "marks": {"cam": True}}), "field 'marks' is not dict"),
    (msgpack.packb({"t": "seen", "marks": [17]}), "field 'marks' is not dict"),
    (msgpack.packb({"t": "drained"}), "incomplete"),
    (msgpack.packb({"t": "drained", "streams": 1.0}), "field 'streams' is not int"),
    (msgpack.packb({"t": "add_source", "source": {"uri": "x"}}), "incomplete"),            # no request id
    (msgpack.packb({"t": "add_source", "request": 1, "source": "x"}), "field 'source' is not dict"),
    (msgpack.packb({"t": "add_source", "request": "1", "source": {}}), "field 'request' is not int"),
    (msgpack.packb({"t": "remove_source", "request": 1, "name": 5}), "field 'name' is not str"),
    (msgpack.packb({"t": "remove_source", "request": 1, "arg": {"name": "cam"}}), "unknown fields"),
    (msgpack.packb({"t": "started", "streams": ["a", 2]}), "field 'streams' is not list"),
    (msgpack.packb({"t": "started", "streams": "a"}), "field 'streams' is not list"),
    (msgpack.packb({"t": "snapshot", "snapshot": []}), "field 'snapshot' is not dict"),
    (msgpack.packb({"t": "request_done", "request": True, "name": "cam"}), "field 'request' is not int"),
    (msgpack.packb({"t": "request_done", "request": 1}), "incomplete"),
    (msgpack.packb({"t": "request_refused", "request": 1, "error": None}), "field 'error' is not str"),
    (msgpack.packb({"t": "outcome", "exit_code": 0}), "incomplete"),
    (msgpack.packb({"t": "outcome", "exit_code": "0", "message": ""}), "field 'exit_code' is not int"),
    (msgpack.packb({"t": "outcome", "exit_code": 0, "message": "", "usage": 1}), "field 'usage' is not bool"),
    (msgpack.packb({"t": "outcome", "exit_code": 0, "message": "", "report": None}), "field 'report' is not dict"),
])
def test_bad_frames_are_rejected(data, reason):
    with pytest.raises(MessageError, match=reason):
        decode(data)


def test_oversized_header_is_rejected_before_parsing():
    with pytest.raises(MessageError, match="exceeds"):
        decode(b"\x00" * (MAX_HEADER_BYTES + 1))


def test_result_tensors_travel_beside_the_header_without_copies():
    boxes = np.arange(2 * 5 * 16, dtype=np.float32).reshape(2, 5, 16)
    scores = np.ones((2, 5, 1), dtype=np.float32)
    parts = encode_result(ResultMsg([_ref(1), _ref(2)], "inference-0", "CPU"), [("reg", boxes), ("cls", scores)])
    assert len(parts) == 3 and len(parts[0]) < 1024          # pixels and tensors are not in the header
    msg, tensors = decode_result([bytes(p) for p in parts])
    assert [f.frame_id for f in msg.frames] == [1, 2]
    np.testing.assert_array_equal(tensors["reg"], boxes)
    np.testing.assert_array_equal(tensors["cls"], scores)


def test_result_with_wrong_tensor_size_is_rejected():
    parts = encode_result(ResultMsg([_ref()], "w", "CPU"), [("reg", np.zeros((1, 4), np.float32))])
    with pytest.raises(MessageError, match="bytes, expected"):
        decode_result([parts[0], b"\x00" * 3])


def test_a_stream_command_carries_every_field_of_a_stream_spec():
    """What the supervisor sends of a new stream is what the stages rebuild its StreamSpec from."""
    spec = StreamSpec(4, "cam", "rtsp://cam/1", True, 1, 12, 18)
    assert {f.name for f in fields(StreamFields)} == {f.name for f in fields(StreamSpec)} - {"removed"}
    msg = decode(AddStreamMsg(**{f.name: getattr(spec, f.name) for f in fields(StreamFields)}).encode())
    assert StreamSpec(**msg.stream_fields()) == spec


def test_every_message_type_has_a_tag_of_its_own():
    """A message class registered under another's tag would be decoded as that one."""
    classes = [c for c in vars(messages).values()
               if isinstance(c, type) and issubclass(c, Message) and c is not Message and c.TYPE]
    assert len({c.TYPE for c in classes}) == len(classes)
    assert all(Message._registry[c.TYPE] is c for c in classes)


def test_the_library_link_takes_each_type_in_one_direction():
    assert set(API_COMMANDS).isdisjoint(API_REPLIES)
    assert {c.TYPE for c in API_COMMANDS} == {"stop_run", "seen", "drained", "add_source", "remove_source"}
    assert {c.TYPE for c in API_REPLIES} == {"started", "snapshot", "request_done", "request_refused", "outcome"}


def test_an_outcome_shows_as_the_dict_the_api_always_gave():
    """Pipeline.outcome stays a dict with exit_code, message, report, usage (and error, when set)."""
    assert OutcomeMsg(0, "", {"state": "finished"}).to_dict() == {
        "exit_code": 0, "message": "", "report": {"state": "finished"}, "usage": False}
    assert OutcomeMsg(2, "bad model", usage=True, error="ModelError").to_dict() == {
        "exit_code": 2, "message": "bad model", "report": {}, "usage": True, "error": "ModelError"}
