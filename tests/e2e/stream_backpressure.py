"""Run by test_python_versions.py under each Python, on plain asyncio (no uvloop): a replica
that floods heartbeats and reads no answer must make the frontend stop reading it.

    python stream_backpressure.py <socket dir> <rpc port>

Exits 0 when the frontend paused reading that peer, 1 (saying how much it buffered) if not.
"""
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]
from clipper.config import Config  # noqa: E402
from clipper.query_frontend.dispatch import Dispatcher  # noqa: E402
from clipper.query_frontend.rpc_server import RpcServer  # noqa: E402
from clipper.rpc import stream  # noqa: E402
from rpc_flood import flood_heartbeats  # noqa: E402


class NoStore:
    """Where the frontend records connected replicas; nothing registers here."""

    def added(self, container):
        pass

    def removed(self, container):
        pass


def main(socket_dir, port):
    server = RpcServer(Config(rpc_port=int(port), rpc_socket_dir=socket_dir), NoStore())
    server.attach(Dispatcher(server.send_batch, time.monotonic))
    server.bind()
    loop = asyncio.new_event_loop()
    task = loop.create_task(server.run())
    thread = threading.Thread(target=lambda: loop.run_until_complete(asyncio.wait([task])))
    thread.start()
    try:
        while server._monitor_events is None:
            time.sleep(0.01)
        flooder, sent = flood_heartbeats(stream.socket_path(socket_dir, 0))
        time.sleep(0.5)             # the frontend answers what it has read
        (peer,) = server._stream_peers
        reading = asyncio.run_coroutine_threadsafe(is_reading(peer), loop).result(10)
        buffered = peer.transport.get_write_buffer_size()
        flooder.close()
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
    print(f"sent {sent} bytes; frontend still reading: {reading}; answers buffered: {buffered} bytes")
    return 1 if reading else 0


async def is_reading(peer):
    return peer.transport.is_reading()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
