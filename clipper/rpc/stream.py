"""Clipper's RPC messages over a Unix stream socket, for the replicas of the local backend.

The messages are Clipper's own (clipper.rpc.codec), frame for frame; only the carrier
differs. ZeroMQ passes every message through an I/O thread on each side, four more thread
wake-ups per prediction than a socket the event loop reads itself (bench/roundtrip.py: a
round trip of one query took 146 us over ZeroMQ and 92 us over a plain socket, same run).
A message on the stream is a little-endian u32 count of frames, one u32 length per frame,
then the frames. Real Clipper containers, Docker and Ray replicas keep ZeroMQ over TCP; the
socket lives in the cluster's private state directory, whose permissions admit its owner only.
"""
import struct
from typing import List, Sequence

_U32 = struct.Struct("<I")
# More frames than any message needs (one per input or output of a batch, and a few):
# a count beyond it is a broken stream, not a batch.
MAX_FRAMES = 1 << 20
SOCKET_NAME = "rpc-{worker}.sock"


class StreamError(ValueError):
    """The peer broke the framing, or announced a frame over the size limit."""


def socket_path(directory: str, worker: int) -> str:
    """Where query frontend worker ``worker`` listens in the cluster's state directory."""
    return f"{directory}/{SOCKET_NAME.format(worker=worker)}"


def header(frames: Sequence[bytes]) -> bytes:
    """What goes before ``frames`` on the stream."""
    return struct.pack(f"<{len(frames) + 1}I", len(frames), *map(len, frames))


def encode(frames: Sequence[bytes]) -> bytes:
    return header(frames) + b"".join(frames)


class MessageReader:
    """Cuts a byte stream into messages (lists of frames) as its bytes arrive."""

    def __init__(self, max_frame_size: int = 0):
        """``max_frame_size``: the largest frame accepted, bytes (0: no limit); a larger one
        is refused as soon as its length arrives, before its bytes are buffered."""
        self.max_frame_size = max_frame_size
        self._pending = bytearray()
        self._needed = 0        # bytes the incomplete message in _pending needs, where known

    def feed(self, data: bytes) -> List[List[bytes]]:
        """The messages ``data`` completes, in order; the rest waits for more bytes.
        Raises StreamError on a broken stream (the connection should then be closed)."""
        if self._pending:
            self._pending += data
            if len(self._pending) < self._needed:     # a large message, still arriving
                return []
            data = bytes(self._pending)
        messages, offset, size = [], 0, len(data)
        while size - offset >= 4:
            (count,) = _U32.unpack_from(data, offset)
            if count == 0 or count > MAX_FRAMES:
                raise StreamError(f"a message of {count} frames (1 to {MAX_FRAMES})")
            start = offset + 4 * (count + 1)
            self._needed = start - offset
            if start > size:
                break
            lengths = struct.unpack_from(f"<{count}I", data, offset + 4)
            if self.max_frame_size and max(lengths) > self.max_frame_size:
                raise StreamError(f"a frame of {max(lengths)} bytes, over the limit of {self.max_frame_size}")
            end = start + sum(lengths)
            self._needed = end - offset
            if end > size:
                break
            frames = []
            for length in lengths:
                frames.append(data[start:start + length])
                start += length
            messages.append(frames)
            offset, self._needed = end, 0
        self._pending = bytearray(data[offset:]) if offset < size else bytearray()
        return messages
