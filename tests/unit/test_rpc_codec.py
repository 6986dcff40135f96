"""RPC v3 frames: round trips of every message, exact bytes of known ones, malformed input."""
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipper.datatypes import InputType
from clipper.rpc import codec

input_types = st.sampled_from(list(InputType))
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
payloads = st.lists(st.binary(max_size=64), max_size=8)


@given(st.integers(0, 2 ** 32 - 1), input_types, payloads)
def test_prediction_request_round_trip(msg_id, input_type, inputs):
    frames = codec.encode_prediction_request(msg_id, input_type, inputs)
    assert codec.decode_clipper_message(frames) == codec.PredictionRequest(msg_id, input_type, inputs)


@given(st.integers(0, 2 ** 32 - 1), payloads)
def test_prediction_response_round_trip(msg_id, outputs):
    frames = codec.encode_prediction_response(msg_id, outputs)
    assert codec.decode_container_message(frames) == codec.PredictionResponse(msg_id, outputs)


@given(names, names, input_types)
def test_new_container_round_trip(name, version, input_type):
    frames = codec.encode_new_container(name, version, input_type)
    assert codec.decode_container_message(frames) == codec.NewContainer(
        name, version, input_type, codec.RPC_VERSION)


@pytest.mark.parametrize("kind", [codec.HEARTBEAT_KEEPALIVE, codec.HEARTBEAT_REQUEST_METADATA])
def test_heartbeat_reply_round_trip(kind):
    assert codec.decode_clipper_message(codec.encode_heartbeat_reply(kind)) == codec.HeartbeatReply(kind)


def test_frames_are_clippers_byte_layout():
    u32 = lambda v: struct.pack("<I", v)
    u64 = lambda v: struct.pack("<Q", v)
    # NewContainer: the input type travels as the decimal code, then the RPC version frame.
    assert codec.encode_new_container("m", "1", InputType.DOUBLES) == [b"", u32(0), b"m", b"1", b"3", u32(3)]
    assert codec.encode_heartbeat() == [b"", u32(2)]
    # Request header sizes are in bytes, not elements.
    two_doubles = struct.pack("<2d", 1.0, 2.0)
    assert codec.encode_prediction_request(7, InputType.DOUBLES, [two_doubles]) == [
        b"", u32(3), u32(1), u32(7), u32(0), u64(24), u64(3) + u64(1) + u64(16), two_doubles]
    assert codec.encode_prediction_response(7, [b"3.0"]) == [
        b"", u32(1), u32(7), u64(16), u64(1) + u64(3), b"3.0"]


@pytest.mark.parametrize("frames, complaint", [
    ([], "delimiter"),
    ([b"x", b"\x02\x00\x00\x00"], "delimiter"),
    ([b"", b"\x09\x00\x00\x00"], "unknown message type"),
    ([b"", b"\x02\x00"], "4-byte"),
    ([b"", struct.pack("<I", 0), b"m", b"1", b"doubles", struct.pack("<I", 3)], "input type"),
    ([b"", struct.pack("<I", 0), b"m", b"1", b"3"], "RPC version"),
    ([b"", struct.pack("<I", 1), struct.pack("<I", 1), struct.pack("<Q", 16),
      struct.pack("<QQ", 1, 5), b"abc"], "do not match"),
])
def test_malformed_container_messages_are_refused(frames, complaint):
    with pytest.raises(codec.ProtocolError, match=complaint):
        codec.decode_container_message(frames)


def test_wrong_rpc_version_is_refused_by_container_side():
    frames = codec.encode_heartbeat_reply(0)
    frames[1] = struct.pack("<I", 2)
    with pytest.raises(codec.ProtocolError, match="RPC version 2"):
        codec.decode_clipper_message(frames)


def test_error_prefix_cannot_start_valid_utf8():
    with pytest.raises(UnicodeDecodeError):
        codec.ERROR_OUTPUT_PREFIX.decode("utf-8")
