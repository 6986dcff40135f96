"""A replica that floods the frontend's Unix socket with heartbeats and reads no answer
(no pytest here: tests/e2e/stream_backpressure.py runs it under each Python's bare venv)."""
import contextlib
import socket

from clipper.rpc import codec, stream


def flood_heartbeats(path):
    """Heartbeats until the frontend stops taking them (or 32 MB): the socket and the bytes sent."""
    flooder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    flooder.connect(path)
    flooder.settimeout(1.0)
    heartbeats = stream.encode(codec.encode_heartbeat()) * 10_000
    sent = 0
    with contextlib.suppress(socket.timeout):
        while sent < 32 << 20:
            flooder.sendall(heartbeats)      # blocks for good once the frontend stops reading
            sent += len(heartbeats)
    return flooder, sent
