"""The management frontend's handling of a body cut short, on a real socket (no Redis: these
requests are answered before any Redis call)."""
import asyncio
import logging
import socket
import struct
import threading
import time

import pytest

from clipper import aiohttp_runner
from clipper.config import Config
from clipper.management.server import build_app

BODY_TIMEOUT = 30.0
HALF_A_BODY = (b"POST /admin/add_app HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"Content-Length: 200000\r\n\r\n" + b" " * 100_000)


@pytest.fixture(scope="module")
def port():
    config = Config(redis_url="redis://127.0.0.1:1", body_timeout=BODY_TIMEOUT)
    loop = asyncio.new_event_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    server = loop.run_until_complete(aiohttp_runner.start(lambda: build_app(config), "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_a_client_that_half_closes_before_its_body_is_complete_is_let_go_at_once(port):
    """The rest of its body cannot come: its handler held what came (and the connection) for
    the whole body timeout, 300 s by default."""
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 5) as connection:
        connection.sendall(HALF_A_BODY)
        time.sleep(0.2)                   # the handler is waiting for the rest
        started = time.monotonic()
        connection.shutdown(socket.SHUT_WR)
        while connection.recv(65536):
            pass
    assert time.monotonic() - started < BODY_TIMEOUT / 3, "closed without waiting for the body timeout"


def test_a_client_that_leaves_mid_body_is_no_internal_error(port, caplog):
    """It was logged as a bug of ours, with a traceback, once per request."""
    caplog.set_level(logging.INFO, logger="clipper.management")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(HALF_A_BODY)
            time.sleep(0.2)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # reset
    time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("leave", ["half-close", "reset"])
def test_what_a_client_sent_before_it_left_is_released_without_the_collector(port, leave):
    """The error that stopped the handler held the body read so far in a cycle, and the
    frontends collect rarely (clipper/__main__.py): clients that sent 4 MB each and left
    kept it for good (200 MB after 50 of them)."""
    import gc
    import tracemalloc
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 5) as connection:
                connection.sendall(HALF_A_BODY.replace(b"200000", b"2000000") + b" " * 900_000)
                time.sleep(0.2)
                if leave == "reset":
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.5)
        kept = tracemalloc.get_traced_memory()[0] - before
        assert kept < 1_000_000, f"{kept} bytes kept after the clients left"
    finally:
        tracemalloc.stop()
        gc.enable()


def test_a_client_that_pipelines_then_half_closes_gets_every_answer_then_the_close(port):
    """It waited for the keep-alive timeout (a minute) after its last answer."""
    bad = b"POST /admin/add_app HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{x}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(bad * 3)
        connection.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := connection.recv(65536):      # until the server closes
            received += chunk
    assert received.count(b"HTTP/1.1 400 ") == 3, received
