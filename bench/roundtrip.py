"""What the second process costs: one round trip of a batch between two Python processes.

The query frontend sends each batch to a model container in another process, so that a
crashing model cannot take the frontend down. This measures the bare round trip of a batch
of one query (200 doubles, 1,600 bytes): over ZeroMQ (a ROUTER and a DEALER), on TCP loopback
as Clipper's containers and Docker and Ray replicas connect, and over IPC; as Clipper's
messages on a Unix socket, as the local backend's replicas connect (clipper.rpc.stream, no
I/O threads); and, for reference, a plain TCP socket echo:
    python bench/roundtrip.py
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, ROOT)
from clipper.rpc import stream  # noqa: E402

TCP_PORT = 21409
PAYLOAD = bytes(1600)
# The other process: a DEALER that echoes every message, as a container answers a batch.
ECHO = """
import sys, zmq
socket = zmq.Context().socket(zmq.DEALER)
socket.connect(sys.argv[1])
socket.send(b"ready")
while True:
    socket.send_multipart(socket.recv_multipart())
"""


def timed(exchange, count: int, warm_up: int = 500) -> list:
    """Microseconds per call of ``exchange`` (one round trip), ``count`` times after a warm-up."""
    times = []
    for i in range(count + warm_up):
        started = time.perf_counter()
        exchange()
        if i >= warm_up:
            times.append((time.perf_counter() - started) * 1e6)
    return times


def round_trips(address: str, count: int) -> list:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(address)
    echo = subprocess.Popen([sys.executable, "-c", ECHO, address])
    try:
        identity, _ = router.recv_multipart()

        def exchange():
            router.send_multipart([identity, PAYLOAD])
            router.recv_multipart()
        return timed(exchange, count)
    finally:
        echo.kill()
        echo.wait()
        router.close(linger=0)
        context.term()


PLAIN_ECHO = """
import socket, sys
connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = connection.recv(65536)
    while len(data) < 1600:
        data += connection.recv(65536)
    connection.sendall(data)
"""


def plain_round_trips(count: int) -> list:
    with socket.create_server(("127.0.0.1", TCP_PORT)) as server:
        echo = subprocess.Popen([sys.executable, "-c", PLAIN_ECHO, str(TCP_PORT)])
        try:
            connection, _ = server.accept()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def exchange():
                connection.sendall(PAYLOAD)
                received = 0
                while received < len(PAYLOAD):
                    received += len(connection.recv(65536))
            with connection:
                return timed(exchange, count)
        finally:
            echo.kill()
            echo.wait()


# The other process: echoes every message on the stream, as a local replica answers a batch.
STREAM_ECHO = """
import socket, sys
from clipper.rpc import stream
connection = socket.socket(socket.AF_UNIX)
connection.connect(sys.argv[1])
reader = stream.MessageReader()
while True:
    for message in reader.feed(connection.recv(1 << 18)):
        connection.sendall(stream.encode(message))
"""


def stream_round_trips(path: str, count: int) -> list:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        echo = subprocess.Popen([sys.executable, "-c", STREAM_ECHO, path], env=env)
        try:
            connection, _ = server.accept()
            reader, message = stream.MessageReader(), [b"", PAYLOAD]

            def exchange():
                connection.sendall(stream.encode(message))
                while not reader.feed(connection.recv(1 << 18)):
                    pass
            with connection:
                return timed(exchange, count)
        finally:
            echo.kill()
            echo.wait()


def measure(count: int = 5000) -> dict:
    """p50 round trip in microseconds: ZeroMQ over TCP loopback and IPC, Clipper's messages on
    a Unix socket (the local backend's hop), a plain TCP socket."""
    with tempfile.TemporaryDirectory(prefix="bench-zmq-") as scratch:
        return {"zmq_tcp": statistics.median(round_trips(f"tcp://127.0.0.1:{TCP_PORT}", count)),
                "zmq_ipc": statistics.median(round_trips(f"ipc://{scratch}/rpc", count)),
                "stream_unix": statistics.median(stream_round_trips(f"{scratch}/rpc.sock", count)),
                "plain_tcp": statistics.median(plain_round_trips(count))}


def describe(figures: dict) -> str:
    return (f"Second process: a round trip of one query (1,600 bytes) between two Python processes "
            f"takes {figures['stream_unix']:.0f} us (p50) as Clipper's messages on a Unix socket, as the "
            f"local backend's replicas connect; over ZeroMQ {figures['zmq_tcp']:.0f} us on TCP loopback "
            f"(Clipper's containers, Docker and Ray replicas), {figures['zmq_ipc']:.0f} us over IPC; "
            f"a plain TCP socket echo {figures['plain_tcp']:.0f} us.")


if __name__ == "__main__":
    print(describe(measure()))
