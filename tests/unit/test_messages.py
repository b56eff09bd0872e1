"""Messages: one schema for both ends, bounded and strict decoding."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from engine.protocol.messages import (
    MAX_HEADER_BYTES,
    AckMsg,
    BatchMsg,
    CreditMsg,
    ErrorMsg,
    FrameMsg,
    FrameRef,
    MessageError,
    ResultMsg,
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
