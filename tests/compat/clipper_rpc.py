"""Clipper's RPC v3 frames, written for the tests from docs/protocol.md, 5 Model-container RPC.

Independent of clipper.rpc.codec on purpose: these tests check our servers and containers
against the protocol as Clipper's own Python container and query frontend speak it, not
against our own reading of it. Frames are listed as the container sees them (a leading
empty delimiter, no identity); little-endian u32/u64 throughout.
"""
import struct
import threading
import time

RPC_VERSION = 3
NEW_CONTAINER, CONTAINER_CONTENT, HEARTBEAT = 0, 1, 2
KEEPALIVE, REQUEST_CONTAINER_METADATA = 0, 1
PREDICT_REQUEST = 0
TYPE_CODES = {"bytes": 0, "ints": 1, "floats": 2, "doubles": 3, "strings": 4}


def u32(value):
    return struct.pack("<I", value)


def u64(value):
    return struct.pack("<Q", value)


def read_u32(frame):
    return struct.unpack("<I", frame)[0]


def read_u64(frame):
    return struct.unpack("<Q", frame)[0]


def read_u64s(frame):
    return list(struct.unpack("<%dQ" % (len(frame) // 8), frame))


# ---- container -> Clipper ----
def heartbeat():
    return [b"", u32(HEARTBEAT)]


def new_container(name, version, input_type):
    # The input type travels as the decimal text of its code; the RPC version is the last frame.
    return [b"", u32(NEW_CONTAINER), name.encode(), version.encode(),
            str(TYPE_CODES[input_type]).encode(), u32(RPC_VERSION)]


def prediction_response(msg_id_frame, outputs):
    header = u64(len(outputs)) + b"".join(u64(len(output)) for output in outputs)
    return [b"", u32(CONTAINER_CONTENT), msg_id_frame, u64(len(header)), header, *outputs]


def parse_from_container(frames):
    """A message a container sent (without the ROUTER's identity frame)."""
    assert frames[0] == b"", "container messages start with an empty delimiter"
    kind = read_u32(frames[1])
    if kind == HEARTBEAT:
        assert len(frames) == 2
        return {"type": "heartbeat"}
    if kind == NEW_CONTAINER:
        return {"type": "new_container", "name": frames[2].decode(), "version": frames[3].decode(),
                "input_type": int(frames[4].decode()), "rpc_version": read_u32(frames[5])}
    assert kind == CONTAINER_CONTENT, kind
    header = read_u64s(frames[4])
    assert read_u64(frames[3]) == len(frames[4]) == 8 * (header[0] + 1)
    outputs = frames[5:]
    assert [len(output) for output in outputs] == header[1:]
    return {"type": "response", "msg_id": frames[2], "outputs": outputs}


# ---- Clipper -> container ----
def heartbeat_reply(kind):
    return [b"", u32(RPC_VERSION), u32(HEARTBEAT), u32(kind)]


def prediction_request(msg_id, input_type, inputs):
    header = u64(TYPE_CODES[input_type]) + u64(len(inputs)) + b"".join(u64(len(i)) for i in inputs)
    return [b"", u32(RPC_VERSION), u32(CONTAINER_CONTENT), u32(msg_id), u32(PREDICT_REQUEST),
            u64(len(header)), header, *inputs]


def parse_from_clipper(frames):
    assert frames[0] == b"" and read_u32(frames[1]) == RPC_VERSION, frames[:2]
    kind = read_u32(frames[2])
    if kind == HEARTBEAT:
        return {"type": "heartbeat_reply", "heartbeat_type": read_u32(frames[3])}
    assert kind == CONTAINER_CONTENT, kind
    assert read_u32(frames[4]) == PREDICT_REQUEST
    header = read_u64s(frames[6])
    assert read_u64(frames[5]) == len(frames[6]) == 8 * (header[1] + 2)
    inputs = frames[7:]
    assert [len(i) for i in inputs] == header[2:], "sizes are in bytes, one per input frame"
    return {"type": "predict", "msg_id": frames[3], "input_type": header[0], "inputs": inputs}


def serve(socket, registration, answer, running=lambda: True, poll_millis=1000,
          heartbeat_seconds=5.0):
    """A container's side of a session on a connected DEALER ``socket``, as Clipper's
    containers behave: heartbeat while idle, send ``registration`` (``new_container(...)``)
    when the frontend asks for metadata, and reply to each prediction request with
    ``answer(message)`` (one bytes output per input). Returns once ``running()`` is false."""
    socket.send_multipart(heartbeat())
    last_heartbeat = time.monotonic()
    while running():
        if not socket.poll(poll_millis):
            if time.monotonic() - last_heartbeat > heartbeat_seconds:
                socket.send_multipart(heartbeat())
                last_heartbeat = time.monotonic()
            continue
        message = parse_from_clipper(socket.recv_multipart())
        if message["type"] == "heartbeat_reply":
            if message["heartbeat_type"] == REQUEST_CONTAINER_METADATA:
                socket.send_multipart(registration)
            continue
        socket.send_multipart(prediction_response(message["msg_id"], answer(message)))


class ContainerThread(threading.Thread):
    """A container's session (``serve``) on a thread of its own, connected to ``address``,
    until ``stop()``; whatever else ends it is kept in ``error`` for the test to report.
    Subclasses answer a request in ``answer(message)`` (one bytes output per input)."""

    def __init__(self, address, registration):
        super().__init__(daemon=True)
        self.address, self.registration = address, registration
        self.error = None
        self.stopping = threading.Event()

    def answer(self, message):
        raise NotImplementedError

    def run(self):
        import zmq          # here: the frame helpers above need no ZeroMQ
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.address)
        try:
            serve(socket, self.registration, self.answer, lambda: not self.stopping.is_set(),
                  poll_millis=100, heartbeat_seconds=1)
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            socket.close()

    def stop(self):
        self.stopping.set()
        self.join(5)
