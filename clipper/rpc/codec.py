"""Pure encoder/decoder of Clipper RPC v3 frames; no sockets here.

Frames are listed as a model container's DEALER socket sees them: an empty delimiter
frame first. The query frontend's ROUTER adds or strips the peer identity in front.
Clipper -> container messages carry an RPC-version frame; container -> Clipper messages
do not, except NewContainer, which ends with one (docs/protocol.md, 5.3 RPC frames).
"""
import struct
from dataclasses import dataclass
from typing import List, Sequence, Union

from clipper.datatypes import InputType

RPC_VERSION = 3

MSG_NEW_CONTAINER = 0
MSG_CONTAINER_CONTENT = 1
MSG_HEARTBEAT = 2

HEARTBEAT_KEEPALIVE = 0
HEARTBEAT_REQUEST_METADATA = 1

REQUEST_PREDICT = 0
REQUEST_FEEDBACK = 1

# Our extension: an output that starts with this prefix reports that the model raised.
# Clipper's containers always send UTF-8 text, and 0xFF never starts valid UTF-8, so no
# real output can be mistaken for an error; Clipper itself would just see odd text.
ERROR_OUTPUT_PREFIX = b"\xffclipper-error:"

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ProtocolError(ValueError):
    """A message that does not follow RPC v3."""


# ---- messages ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Heartbeat:
    """Container -> Clipper keep-alive (or first contact)."""


@dataclass(frozen=True)
class NewContainer:
    model_name: str
    model_version: str
    input_type: InputType
    rpc_version: int


@dataclass(frozen=True)
class PredictionResponse:
    msg_id: int
    outputs: List[bytes]


@dataclass(frozen=True)
class HeartbeatReply:
    """Clipper -> container: keep-alive, or a request to send NewContainer."""
    heartbeat_type: int


@dataclass(frozen=True)
class PredictionRequest:
    msg_id: int
    input_type: InputType
    inputs: List[bytes]


ContainerMessage = Union[Heartbeat, NewContainer, PredictionResponse]
ClipperMessage = Union[HeartbeatReply, PredictionRequest]


# ---- helpers -----------------------------------------------------------------------------

def _u32(value: int) -> bytes:
    return _U32.pack(value)


def _read_u32(frame: bytes, what: str) -> int:
    if len(frame) != 4:
        raise ProtocolError(f"{what}: expected a 4-byte integer frame, got {len(frame)} bytes")
    return _U32.unpack(frame)[0]


def _read_u64s(frame: bytes, what: str) -> List[int]:
    if len(frame) % 8:
        raise ProtocolError(f"{what}: length {len(frame)} is not a multiple of 8")
    return [value for (value,) in _U64.iter_unpack(frame)]


def _split_delimiter(frames: Sequence[bytes]) -> Sequence[bytes]:
    if not frames or frames[0] != b"":
        raise ProtocolError("message does not start with an empty delimiter frame")
    if len(frames) < 2:
        raise ProtocolError("message has no type frame")
    return frames[1:]


def _sized_header(sizes: Sequence[int]) -> List[bytes]:
    """The u64 header-length frame followed by the header of u64 words."""
    header = b"".join(_U64.pack(size) for size in sizes)
    return [_U64.pack(len(header)), header]


# ---- container -> Clipper ----------------------------------------------------------------

def encode_heartbeat() -> List[bytes]:
    return [b"", _u32(MSG_HEARTBEAT)]


def encode_new_container(model_name: str, model_version: str, input_type: InputType) -> List[bytes]:
    # Clipper parses the input type with stoi: it must be the decimal code, not a name.
    return [b"", _u32(MSG_NEW_CONTAINER), model_name.encode(), model_version.encode(),
            str(int(input_type)).encode(), _u32(RPC_VERSION)]


def encode_prediction_response(msg_id: int, outputs: Sequence[bytes]) -> List[bytes]:
    header = _sized_header([len(outputs), *map(len, outputs)])
    return [b"", _u32(MSG_CONTAINER_CONTENT), _u32(msg_id), *header, *outputs]


def decode_container_message(frames: Sequence[bytes]) -> ContainerMessage:
    body = _split_delimiter(frames)
    msg_type = _read_u32(body[0], "message type")
    if msg_type == MSG_HEARTBEAT:
        return Heartbeat()
    if msg_type == MSG_NEW_CONTAINER:
        if len(body) != 5:
            raise ProtocolError(
                f"NewContainer needs name, version, input type and RPC version frames; "
                f"got {len(body) - 1} frames")
        try:
            input_type = InputType(int(body[3].decode("ascii")))
            name, version = body[1].decode(), body[2].decode()
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(
                f"NewContainer has an invalid name, version or input type code {body[3]!r}") from None
        return NewContainer(name, version, input_type, _read_u32(body[4], "RPC version"))
    if msg_type == MSG_CONTAINER_CONTENT:
        if len(body) < 4:
            raise ProtocolError("prediction response is missing its id or header frames")
        msg_id = _read_u32(body[1], "message id")
        header = _read_u64s(body[3], "response header")
        if not header or header[0] != len(header) - 1:
            raise ProtocolError("response header does not list one length per output")
        outputs = list(body[4:])
        if len(outputs) != header[0] or [len(o) for o in outputs] != header[1:]:
            raise ProtocolError("response output frames do not match the lengths in its header")
        return PredictionResponse(msg_id, outputs)
    raise ProtocolError(f"unknown message type {msg_type}")


# ---- Clipper -> container ----------------------------------------------------------------

def encode_heartbeat_reply(heartbeat_type: int) -> List[bytes]:
    return [b"", _u32(RPC_VERSION), _u32(MSG_HEARTBEAT), _u32(heartbeat_type)]


def encode_prediction_request(msg_id: int, input_type: InputType,
                              inputs: Sequence[bytes]) -> List[bytes]:
    # Sizes in the header are bytes, not elements (docs/protocol.md, 5.3 RPC frames).
    header = _sized_header([int(input_type), len(inputs), *map(len, inputs)])
    return [b"", _u32(RPC_VERSION), _u32(MSG_CONTAINER_CONTENT), _u32(msg_id),
            _u32(REQUEST_PREDICT), *header, *inputs]


def decode_clipper_message(frames: Sequence[bytes]) -> ClipperMessage:
    body = _split_delimiter(frames)
    version = _read_u32(body[0], "RPC version")
    if version != RPC_VERSION:
        raise ProtocolError(f"unsupported RPC version {version}; this container speaks {RPC_VERSION}")
    if len(body) < 2:
        raise ProtocolError("message has no type frame")
    msg_type = _read_u32(body[1], "message type")
    if msg_type == MSG_HEARTBEAT:
        if len(body) != 3:
            raise ProtocolError("heartbeat reply needs exactly one heartbeat-type frame")
        return HeartbeatReply(_read_u32(body[2], "heartbeat type"))
    if msg_type == MSG_CONTAINER_CONTENT:
        if len(body) < 6:
            raise ProtocolError("prediction request is missing its id, type or header frames")
        msg_id = _read_u32(body[2], "message id")
        request_type = _read_u32(body[3], "request type")
        if request_type != REQUEST_PREDICT:
            raise ProtocolError(f"request type {request_type} is not supported (only predictions)")
        header = _read_u64s(body[5], "input header")
        if len(header) < 2 or header[1] != len(header) - 2:
            raise ProtocolError("input header does not list one size per input")
        try:
            input_type = InputType(header[0])
        except ValueError:
            raise ProtocolError(f"unknown input type code {header[0]}") from None
        inputs = list(body[6:])
        if len(inputs) != header[1] or [len(i) for i in inputs] != header[2:]:
            raise ProtocolError("input frames do not match the sizes in the input header")
        return PredictionRequest(msg_id, input_type, inputs)
    raise ProtocolError(f"unknown message type {msg_type}")
