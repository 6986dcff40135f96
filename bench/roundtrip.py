"""What the second process costs: one ZeroMQ round trip between two Python processes.

The query frontend (a ROUTER) sends each batch to a model container (a DEALER) in another
process, so that a crashing model cannot take the frontend down. This measures the bare
round trip of a batch of one query (200 doubles, 1,600 bytes), over TCP on loopback as our
containers connect, and over IPC (a Unix socket); and, for reference, the same echo over a
plain TCP socket, without ZeroMQ's I/O threads:
    python bench/roundtrip.py
"""
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

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


def measure(count: int = 5000) -> dict:
    """p50 round trip in microseconds: ZeroMQ over TCP loopback and IPC, a plain TCP socket."""
    with tempfile.TemporaryDirectory(prefix="bench-zmq-") as scratch:
        return {"zmq_tcp": statistics.median(round_trips(f"tcp://127.0.0.1:{TCP_PORT}", count)),
                "zmq_ipc": statistics.median(round_trips(f"ipc://{scratch}/rpc", count)),
                "plain_tcp": statistics.median(plain_round_trips(count))}


def describe(figures: dict) -> str:
    return (f"Second process: a ZeroMQ round trip of one query (1,600 bytes) between two Python processes "
            f"takes {figures['zmq_tcp']:.0f} us (p50) over TCP loopback as our containers connect, "
            f"{figures['zmq_ipc']:.0f} us over IPC; a plain TCP socket echo {figures['plain_tcp']:.0f} us.")


if __name__ == "__main__":
    print(describe(measure()))
