"""Clipper's RPC messages on a Unix stream (the local backend's replicas): the framing cut
back into the same messages however the bytes arrive, and a broken stream refused."""
import pytest

from clipper.datatypes import InputType
from clipper.rpc import codec, stream

REQUEST = codec.encode_prediction_request(7, InputType.DOUBLES, [b"\x00" * 16, b"", b"\x01" * 8])
RESPONSE = codec.encode_prediction_response(7, [b"3.0", b"", b"1.0"])


def test_messages_come_out_whole_whatever_the_bytes_arrive_in():
    data = stream.encode(REQUEST) + stream.encode(RESPONSE) + stream.encode(codec.encode_heartbeat())
    for chunk in (1, 3, 7, len(data)):
        reader, messages = stream.MessageReader(), []
        for offset in range(0, len(data), chunk):
            messages += reader.feed(data[offset:offset + chunk])
        assert messages == [REQUEST, RESPONSE, codec.encode_heartbeat()]
        assert all(type(frame) is bytes for message in messages for frame in message)


def test_a_large_message_arriving_in_pieces_is_kept_until_it_is_complete():
    inputs = [bytes([k]) * 300_000 for k in range(5)]
    data = stream.encode(codec.encode_prediction_request(1, InputType.BYTES, inputs))
    reader = stream.MessageReader()
    pieces = [data[offset:offset + 65536] for offset in range(0, len(data), 65536)]
    assert all(reader.feed(piece) == [] for piece in pieces[:-1])
    (message,) = reader.feed(pieces[-1])
    assert codec.decode_clipper_message(message).inputs == inputs


def test_a_frame_over_the_limit_is_refused_as_soon_as_its_length_arrives():
    reader = stream.MessageReader(max_frame_size=1000)
    announced = stream.header([b"", b"x" * 1001])        # the lengths, none of the bytes
    with pytest.raises(stream.StreamError, match="1001 bytes, over the limit of 1000"):
        reader.feed(announced)


@pytest.mark.parametrize("count", [0, stream.MAX_FRAMES + 1])
def test_a_frame_count_no_message_has_is_a_broken_stream(count):
    with pytest.raises(stream.StreamError, match=f"a message of {count} frames"):
        stream.MessageReader().feed(count.to_bytes(4, "little") + b"\x00" * 8)
