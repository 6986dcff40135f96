"""The query frontend's HTTP layer (clipper/query_frontend/http.py) on a real socket.

A small application stands in for the frontend: it answers at once, later (a Deferred
settled by a timer, as predictions are settled by the RPC callback), or with a bug.
Short limits and timeouts keep these tests fast; the frontend's own are in Config.
"""
import asyncio
import contextlib
import dataclasses
import gzip
import itertools
import select
import socket
import threading
import time
import zlib

import orjson
import pytest

from clipper.errors import RequestError
from clipper.query_frontend import http

LIMITS = http.Limits(max_body_size=1024, header_timeout=0.5, body_timeout=0.5, keepalive_timeout=3)


class EchoApp(http.Application):
    """/now answers at once, /later/<ms> after that many milliseconds, /busy/<ms> at once after
    holding the event loop that long (a model's answer from the cache, say, many times over),
    /bug raises KeyError."""

    def handle(self, request):
        if request.path == "/bug":
            raise KeyError("internal")
        if request.path == "/refused":
            raise RequestError("no such thing", 404, "Not found")
        body = b"%s %s %s" % (request.method.encode(), request.path.encode(), request.body)
        if request.path.startswith("/later/"):
            answer = http.Deferred()
            delay = int(request.path.rsplit("/", 1)[1]) / 1000
            asyncio.get_running_loop().call_later(delay, answer.settle, http.Response(200, body, b"text/plain"))
            return answer
        if request.path.startswith("/busy/"):
            time.sleep(int(request.path.rsplit("/", 1)[1]) / 1000)
        return http.Response(200, body, b"text/plain")

    def render_error(self, error, request):
        return http.Response(error.status, orjson.dumps({"error": error.kind, "cause": error.message}))


@contextlib.contextmanager
def running_server(limits):
    """An HTTP server of EchoApp on a loopback port, its loop in a thread; yields the server."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def main():
        holder["server"] = await http.Server(EchoApp(), limits).start("127.0.0.1", 0)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield holder["server"]
    finally:
        asyncio.run_coroutine_threadsafe(holder["server"].stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextlib.contextmanager
def serving(limits):
    """As running_server; yields the port."""
    with running_server(limits) as server:
        yield server.listener.sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def port():
    with serving(LIMITS) as port:
        yield port


def connect(port):
    return contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=5))


def post(path, body=b"", extra=b""):
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (path, len(body), extra, body)


def read_until_closed(connection, timeout=5.0):
    connection.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except socket.timeout:
            return data + b"<still open>"
        if not chunk:
            return data
        data += chunk


def read_responses(connection, count):
    """``count`` responses (status, body) from a keep-alive connection."""
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            assert chunk, f"closed after {len(answers)} answers: {data!r}"
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(data) < length:
            data += connection.recv(65536)
        answers.append((int(head.split(b" ")[1]), data[:length]))
        data = data[length:]
    return answers


def test_pipelined_requests_are_answered_in_order(port):
    with connect(port) as connection:
        connection.sendall(post(b"/later/200", b"a") + post(b"/now", b"b") + post(b"/later/50", b"c")
                           + post(b"/now", b"d"))
        answers = read_responses(connection, 4)
    assert answers == [(200, b"POST /later/200 a"), (200, b"POST /now b"), (200, b"POST /later/50 c"),
                       (200, b"POST /now d")]


def test_a_client_pipelining_many_requests_does_not_hold_the_others_back(port):
    """One read brings up to 256 KiB: hundreds of pipelined requests, all handled before any
    other client's used to be (40 such connections asking for cached answers: another
    client's p50 1.7 s). Each connection now gets a share of each loop turn."""
    count = 400
    flood = b"".join(post(b"/busy/2", b"%d" % i) for i in range(count))      # 0.8 s of work
    with connect(port) as flooder, connect(port) as other:
        flooder.sendall(flood)
        time.sleep(0.05)
        asked = time.monotonic()
        other.sendall(post(b"/now", b"mine"))
        assert read_responses(other, 1) == [(200, b"POST /now mine")]
        waited = time.monotonic() - asked
        answers = read_responses(flooder, count)
        flood_took = time.monotonic() - asked
    assert answers == [(200, b"POST /busy/2 %d" % i) for i in range(count)]
    assert waited < flood_took / 3, (waited, flood_took)


@pytest.mark.parametrize("framing", [
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",     # CL.TE smuggling
    b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",                   # two lengths
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",            # bad chunk size
    b"Content-Length: -1\r\n\r\n",
    b"Content-Length : 4\r\n\r\nabcd",                                       # space before colon
])
def test_malformed_framing_is_refused_and_the_connection_closed(port, framing):
    with connect(port) as connection:
        connection.sendall(b"POST /now HTTP/1.1\r\nHost: t\r\n" + framing + post(b"/now", b"smuggled"))
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"Malformed HTTP request" in reply
    assert b"smuggled" not in reply


def test_chunked_bodies_are_read(port):
    with connect(port) as connection:
        connection.sendall(b"POST /now HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert read_responses(connection, 1) == [(200, b"POST /now abcde")]


def test_a_body_in_tiny_chunks_gets_400():
    """Each chunk costs Python calls: 4 MiB in one-byte chunks held the event loop 2.5 s."""
    def chunked(size, count):
        chunks = b"".join(b"%x\r\n%s\r\n" % (size, b"y" * size) for _ in range(count))
        return b"POST /now HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    count = http.FREE_CHUNKS + 100
    with serving(dataclasses.replace(LIMITS, max_body_size=1 << 20)) as port, connect(port) as connection:
        connection.sendall(chunked(http.MIN_CHUNK_AVERAGE, count))        # small, but not tiny
        [(status, answer)] = read_responses(connection, 1)
        assert status == 200 and len(answer) == len(b"POST /now ") + http.MIN_CHUNK_AVERAGE * count
        connection.sendall(chunked(1, http.FREE_CHUNKS))         # tiny, but no more than are free
        [(status, answer)] = read_responses(connection, 1)
        assert status == 200 and len(answer) == len(b"POST /now ") + http.FREE_CHUNKS, answer[:200]
        connection.sendall(chunked(1, count))
        status, answer = read_responses(connection, 1)[0]
    assert status == 400 and b"chunks averaging under" in answer


@pytest.mark.parametrize("coding", [
    b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: deflate,chunked\r\n",
    b"Transfer-Encoding: x-custom, chunked\r\n",
    b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",      # the same list, in two lines
])
def test_a_transfer_coding_other_than_chunked_gets_501(port, coding):
    """The parser would read the chunks and leave the coding undone, handing on gzip bytes."""
    with connect(port) as connection:
        connection.sendall(b"POST /now HTTP/1.1\r\nHost: t\r\n" + coding
                           + b"\r\n3\r\nabc\r\n0\r\n\r\n" + post(b"/now", b"behind"))
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 501 ") and b"is not supported" in reply
    assert b"behind" not in reply


def test_limits_get_413_414_431(port):
    """Each labelled by its status, not "Bad request" (the query API's "error" field)."""
    for request, status, kind in (
            (post(b"/now", b"x" * 1025), 413, b"Body too large"),
            (b"POST /now HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413, b"Body too large"),
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, b"Request target too long"),
            (b"GET /now HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, b"Request headers too large"),
            (b"GET /now HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, b"Request headers too large")):
        with connect(port) as connection:
            connection.sendall(request)
            reply = read_until_closed(connection)
        assert reply.startswith(b"HTTP/1.1 %d " % status), (status, reply[:100])
        assert b'"error":"%s"' % kind in reply, reply[-300:]


def test_an_endless_header_is_cut_off(port):
    with connect(port) as connection:
        connection.sendall(b"GET /now HTTP/1.1\r\nX-Endless: ")
        with contextlib.suppress(OSError):       # the server may close while we still send
            for _ in range(200):
                connection.sendall(b"a" * 1000)
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_slow_and_idle_header_senders_are_cut_off(port):
    started = time.monotonic()
    with connect(port) as idle, connect(port) as slow:
        slow.sendall(b"GET /now HTTP/1.1\r\nHo")
        assert read_until_closed(idle) == b""               # nothing asked: closed, no answer
        reply = read_until_closed(slow)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"headers did not arrive within 0.5 s" in reply
    assert time.monotonic() - started < LIMITS.header_timeout + 1


def test_keep_alive_clients_may_idle_longer_than_the_header_timeout(port):
    with connect(port) as connection:
        connection.sendall(post(b"/now", b"1"))
        assert read_responses(connection, 1) == [(200, b"POST /now 1")]
        time.sleep(LIMITS.header_timeout * 3)                # idle, below the keep-alive limit
        connection.sendall(post(b"/now", b"2"))
        assert read_responses(connection, 1) == [(200, b"POST /now 2")]


def test_a_slow_body_gets_408(port):
    with connect(port) as connection:
        connection.sendall(b"POST /now HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"body did not arrive within 0.5 s" in reply


@pytest.mark.parametrize("path", [b"/now", b"/later/100"])
def test_a_half_closed_client_gets_its_answer(port, path):
    with connect(port) as connection:
        connection.sendall(post(path, b"x"))
        connection.shutdown(socket.SHUT_WR)
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"POST " + path + b" x")


def test_a_bug_answers_500_and_the_connection_keeps_serving(port, caplog):
    with connect(port) as connection:
        connection.sendall(post(b"/bug") + post(b"/refused") + post(b"/now", b"ok"))
        answers = read_responses(connection, 3)
    assert answers[0][0] == 500 and orjson.loads(answers[0][1]) == {"error": "Internal server error",
                                                                     "cause": "Internal server error"}
    assert answers[1] == (404, b'{"error":"Not found","cause":"no such thing"}')
    assert answers[2] == (200, b"POST /now ok")
    assert "KeyError" in caplog.text


def test_compressed_bodies_are_decoded_within_the_limit(port):
    with connect(port) as connection:
        connection.sendall(post(b"/now", gzip.compress(b"hello"), b"Content-Encoding: gzip\r\n"))
        assert read_responses(connection, 1) == [(200, b"POST /now hello")]
        connection.sendall(post(b"/now", gzip.compress(b"0" * 5000), b"Content-Encoding: gzip\r\n"))
        assert read_responses(connection, 1)[0][0] == 413
        connection.sendall(post(b"/now", b"not gzip", b"Content-Encoding: gzip\r\n"))
        status, body = read_responses(connection, 1)[0]
        assert status == 400 and b"could not be decoded" in body


def test_a_gzip_body_of_several_members_is_decoded_whole(port):
    """RFC 1952: a gzip file is a series of members; each is decoded, within the limit."""
    with connect(port) as connection:
        connection.sendall(post(b"/now", gzip.compress(b"hel") + gzip.compress(b"lo"), b"Content-Encoding: gzip\r\n"))
        assert read_responses(connection, 1) == [(200, b"POST /now hello")]
        members = gzip.compress(b"0" * 1000) + gzip.compress(b"0" * 1000)
        connection.sendall(post(b"/now", members, b"Content-Encoding: gzip\r\n"))
        assert read_responses(connection, 1)[0][0] == 413


def test_a_gzip_body_of_many_members_gets_400(port):
    """Each member costs a decompressor: 4 MiB of empty ones held the event loop half a second."""
    with connect(port) as connection:
        connection.sendall(post(b"/now", gzip.compress(b"") * (http.MAX_GZIP_MEMBERS + 1),
                                b"Content-Encoding: gzip\r\n"))
        status, answer = read_responses(connection, 1)[0]
    assert status == 400 and b"more than %d gzip members" % http.MAX_GZIP_MEMBERS in answer


@pytest.mark.parametrize("encoding, body", [
    (b"gzip", gzip.compress(b"hello") + b"junk"),
    (b"gzip", gzip.compress(b"hello") + gzip.compress(b"lo")[:-4]),     # a second member cut short
    (b"deflate", zlib.compress(b"hello") + b"junk"),
    (b"deflate", zlib.compress(b"hello") + zlib.compress(b"lo")),
], ids=["gzip+junk", "gzip+cut-member", "deflate+junk", "deflate+deflate"])
def test_data_after_the_end_of_a_compressed_body_gets_400(port, encoding, body):
    """It used to be dropped unread, and the request answered as if the body ended there."""
    with connect(port) as connection:
        connection.sendall(post(b"/now", body, b"Content-Encoding: " + encoding + b"\r\n"))
        status, answer = read_responses(connection, 1)[0]
    assert status == 400 and b"The request body could not be decoded: " in answer


def test_content_encodings_in_several_lines_are_all_applied_or_refused(port):
    """Repeated lines of a list header make one list (RFC 9110): gzip twice is not gzip."""
    with connect(port) as connection:
        connection.sendall(post(b"/now", gzip.compress(b"hello"),
                                b"Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n"))
        status, answer = read_responses(connection, 1)[0]
    assert status == 415 and b"Content-Encoding gzip, gzip is not supported" in answer


def test_expect_100_continue(port):
    with connect(port) as connection:
        connection.sendall(b"POST /now HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert connection.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(b"hi")
        assert read_responses(connection, 1) == [(200, b"POST /now hi")]


def test_http_1_0_and_connection_close_are_answered_then_closed(port):
    for request in (b"POST /now HTTP/1.0\r\nContent-Length: 1\r\n\r\nx",
                    b"POST /now HTTP/1.1\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx" + post(b"/now", b"y")):
        with connect(port) as connection:
            connection.sendall(request)
            reply = read_until_closed(connection)
        assert reply.endswith(b"POST /now x") and b"Connection: close" in reply


def test_targets_are_routed_as_sent_and_absolute_form_is_read(port):
    """Not percent-decoded, as Clipper's server: /d%2Fpredict reached app d's predict route."""
    with connect(port) as connection:
        connection.sendall(b"POST http://t/now HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
                           b"POST /a%2Fb?x=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert read_responses(connection, 2) == [(200, b"POST /now "), (200, b"POST /a%2Fb ")]


def send_until_not_read(connection):
    """Pipeline requests whose answers are never read until the server stops reading them
    (once the unread answers fill the socket buffers); how many were sent whole, and the
    rest of the one cut off."""
    requests = (post(b"/now", b"%06d" % index + b"x" * 994) for index in itertools.count())
    sent, pending = 0, b""
    connection.setblocking(False)
    while sent < 30_000:                 # 31 MB of requests, 33 MB of answers
        if not pending:
            pending = next(requests)
        if not select.select([], [connection], [], 1.0)[1]:
            break                        # the server stopped reading
        pending = pending[connection.send(pending):]
        sent += not pending
    assert sent < 30_000, "the server read every request of a client that reads nothing"
    return sent, pending


def test_a_client_that_does_not_read_its_answers_is_not_read_further(port):
    """Pipelined requests from a client that reads none of its answers: once the answers
    it has not read fill the socket buffers, the server reads no more of its requests (it
    used to read and answer them all, holding every answer in memory: 218 MB in 2 s here),
    and when the client reads, within keepalive_timeout, every answer comes, in order."""
    with connect(port) as connection:
        sent, pending = send_until_not_read(connection)
        # Longer than the header and body timeouts: the request cut off in the server's
        # buffer waits for us, not we for it, so it gets no 408.
        time.sleep(max(LIMITS.header_timeout, LIMITS.body_timeout) * 2)
        connection.setblocking(True)
        connection.settimeout(5)
        rest = threading.Thread(target=connection.sendall, args=(pending,))   # as we read
        rest.start()
        answers = read_responses(connection, sent + 1)
        rest.join()
    assert [body[10:16] for _, body in answers] == [b"%06d" % index for index in range(sent + 1)]
    assert {status for status, _ in answers} == {200}


def test_a_client_that_never_reads_its_answers_is_cut_off():
    """What such a client left unread stayed in the server's memory for as long as it kept
    the connection open (176 MB for 20 connections, by a review): after keepalive_timeout
    with nothing read, the server drops it and closes the connection."""
    # Longer than send_until_not_read's 1 s wait: it would find the connection reset.
    limits = http.Limits(max_body_size=1024, header_timeout=0.5, body_timeout=0.5, keepalive_timeout=1.5)
    with serving(limits) as port, connect(port) as connection:
        sent, _ = send_until_not_read(connection)
        time.sleep(limits.keepalive_timeout * 3)
        connection.setblocking(True)
        connection.settimeout(5)
        data = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(1 << 20):
                data += chunk
    assert data.count(b"HTTP/1.1 200 OK") < sent, "every answer was kept for a client that read none for 4.5 s"


@pytest.mark.parametrize("request_line", [
    b"GET /now HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n",
])
def test_an_upgrade_is_answered_with_connection_close(port, request_line):
    """No protocol is switched to: the answer says that the connection closes after it (it
    used to close without saying so, so a request pipelined behind it vanished unanswered)."""
    with connect(port) as connection:
        connection.sendall(request_line + post(b"/now", b"behind"))
        reply = read_until_closed(connection)
    assert reply.count(b"HTTP/1.1 ") == 1 and b"\r\nConnection: close\r\n" in reply
    assert b"behind" not in reply


def test_a_request_split_across_reads_at_any_point_is_answered_in_order(port):
    """The header and body deadlines start once a read leaves a request incomplete:
    wherever the reads cut pipelined requests, each is read whole and answered in order."""
    requests = post(b"/later/20", b"ab") + post(b"/now", b"cd")
    for cut in range(1, len(requests)):
        with connect(port) as connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.sendall(requests[:cut])
            time.sleep(0.003)                # two reads on the server's side
            connection.sendall(requests[cut:])
            assert read_responses(connection, 2) == [(200, b"POST /later/20 ab"), (200, b"POST /now cd")], cut


def dribble(connection, start: bytes, byte: bytes, seconds: float) -> bytes:
    """Send ``start``, then one ``byte`` every 50 ms until the server closes; what it sent."""
    connection.sendall(start)
    ends, reply = time.monotonic() + seconds, b""
    while time.monotonic() < ends:
        if select.select([connection], [], [], 0.05)[0]:
            chunk = connection.recv(65536)
            if not chunk:
                return reply
            reply += chunk
        with contextlib.suppress(OSError):   # the server may close while we still send
            connection.sendall(byte)
    return reply + b"<still open>"


@pytest.mark.parametrize("start, byte, late", [
    (b"GET /now HTTP/1.1\r\nX-Slow: ", b"a", b"headers"),
    (b"POST /now HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", b"a", b"body"),
    (post(b"/later/50", b"first") + b"GET /now HTTP/1.1\r\nX-Slow: ", b"a", b"headers"),
    (post(b"/later/50", b"first") + b"POST /now HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", b"a", b"body"),
])
def test_headers_or_a_body_dribbled_byte_by_byte_get_408_on_time(port, start, byte, late):
    """Each byte that arrives does not restart the request's deadline (slowloris); a request
    pipelined behind one answered later is still timed."""
    started = time.monotonic()
    with connect(port) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = dribble(connection, start, byte, seconds=5)
    assert time.monotonic() - started < LIMITS.header_timeout + 1.5
    if start.startswith(b"POST /later/50"):
        assert reply.startswith(b"HTTP/1.1 200 ") and b"POST /later/50 first" in reply
        reply = reply[reply.index(b"first") + len(b"first"):]
    assert reply.startswith(b"HTTP/1.1 408 ") and late + b" did not arrive within 0.5 s" in reply


@pytest.mark.parametrize("sent", [
    b"POST /now HTTP/1.1\r\nContent-Length: 900000\r\n\r\n" + b"x" * 600_000,      # half a body
    post(b"/later/100", b"first") + post(b"/now", b"y" * 500_000),               # and one pipelined
], ids=["half-a-body", "pipelined"])
def test_a_client_that_leaves_takes_what_it_sent_with_it_without_the_collector(sent):
    """The parser holds its connection: a cycle that only the garbage collector breaks, and
    the frontends collect rarely (clipper/__main__.py). 400 clients that each sent 4 MB of
    a body, then left, kept 1.5 GB of the query frontend for good."""
    import gc
    import weakref
    limits = http.Limits(max_body_size=1_000_000, header_timeout=5, body_timeout=5, keepalive_timeout=5)
    gc.disable()
    try:
        with running_server(limits) as server, connect(server.listener.sockets[0].getsockname()[1]) as connection:
            connection.sendall(sent)
            ends = time.monotonic() + 5
            while not server.connections or any(c.body_size < 400_000 and not c.answers
                                                 for c in list(server.connections)):
                assert time.monotonic() < ends, "the server read what was sent"
                time.sleep(0.01)
            left = [weakref.ref(c) for c in list(server.connections)]
            connection.close()
            ends = time.monotonic() + 5
            while any(c() is not None and c().transport is not None for c in left):
                assert time.monotonic() < ends, "the server saw the client leave"
                time.sleep(0.01)
            time.sleep(0.3)        # the pipelined answer (/later/100) settles meanwhile
            assert [c for c in left if c() is not None] == [], "freed as the client left"
    finally:
        gc.enable()
