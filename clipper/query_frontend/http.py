"""HTTP/1.1 for the query API: llhttp's parser (httptools), our limits, timeouts and order.

Parsing is httptools' (llhttp, the parser of Node.js and uvicorn): it refuses malformed
framing, Content-Length with Transfer-Encoding, duplicate lengths and bad chunks. This module
adds what a server owes its other clients: bounded headers (431) and bodies (413), a
deadline for the headers and another for the body (408), an idle keep-alive limit,
answers in request order (pipelining), and an answer for a client that half-closes its
socket after its request. A handler answers with a ``Response`` at once or with a future of
one, so a prediction is written from the callback that settles it, not by a woken coroutine.
"""
import asyncio
import functools
import itertools
import logging
import time
import weakref
import zlib
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Awaitable, Callable, Deque, Dict, Optional, Tuple, Union

import httptools

from clipper.errors import RequestError
from clipper.request_body import body_too_large

log = logging.getLogger("clipper.query_frontend.http")

MAX_LINE_SIZE = 8190             # request line and each header line, as aiohttp's defaults
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024     # all header lines of one request
MAX_QUEUED_ANSWERS = 64          # pipelined requests read ahead of their answers
# Requests of one connection handled in one turn of the event loop; the rest of what one read
# brought wait for the next turn (_Held). One read holds up to 256 KiB: thousands of small
# pipelined requests, which, handled at once, kept every other client waiting (40 such
# connections asking for cached answers: another client's p50 1.7 s, most answers defaults).
MAX_HANDLED_PER_TURN = 32
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 5.0             # after a refusal, how long the rest of a request is dropped
GZIP_WBITS = 16 + zlib.MAX_WBITS
DECODERS = {b"gzip": GZIP_WBITS, b"x-gzip": GZIP_WBITS, b"deflate": zlib.MAX_WBITS}
FIRST_DECODE_SLICE = 1024        # of a compressed body, fed to zlib (see _decode_stream)
# Each member costs a decompressor: 4 MiB of empty members held the event loop 0.3 to 0.6 s.
MAX_GZIP_MEMBERS = 16              # concatenated gzip files: a few, in practice
# Each chunk of a chunked body costs Python calls: 4 MiB sent as one-byte chunks held the event
# loop 2.5 s per request (as a Content-Length body, 10 ms), every other client waiting. Past
# the first FREE_CHUNKS, a body whose chunks average under MIN_CHUNK_AVERAGE bytes is refused.
FREE_CHUNKS = 1024
MIN_CHUNK_AVERAGE = 64
# Lists whose repeated lines are one comma-joined line (RFC 9110, 5.3): each coding is checked.
LIST_HEADERS = frozenset((b"transfer-encoding", b"content-encoding"))


@dataclass(frozen=True)
class Limits:
    max_body_size: int
    header_timeout: float        # first byte of a request (or the connection) to its last header
    body_timeout: float          # last header to last body byte
    keepalive_timeout: float     # idle between requests


class Request:
    __slots__ = ("method", "path", "headers", "body", "target")

    def __init__(self, method: str, path: str, headers: Dict[bytes, bytes], body: bytes,
                 target: bytes = b""):
        self.method = method
        self.path = path
        self.target = target          # as sent: the path with its query string
        # Lower-case names; a repeated header keeps its last value, but the lines of one in
        # LIST_HEADERS are joined with ", ".
        self.headers = headers
        self.body = body


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: bytes = b"application/json",
                 headers: bytes = b""):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers        # extra header lines, each ending in CRLF


class Deferred:
    """An answer given later: ``settle`` writes it at once, from the caller's callback,
    without waking a coroutine (no extra turn of the event loop)."""
    __slots__ = ("response", "_on_settled")

    def __init__(self):
        self.response: Optional[Response] = None     # None until settled
        self._on_settled: Optional[Callable[[], None]] = None

    def settle(self, response: Response) -> None:
        self.response = response
        if self._on_settled is not None:
            self._on_settled()

    async def wait(self) -> Response:
        """For a coroutine that needs the response itself."""
        if self.response is None:
            future = asyncio.get_running_loop().create_future()
            self._on_settled = lambda: future.done() or future.set_result(None)
            await future
        return self.response


Answer = Union[Response, Deferred, Awaitable[Response]]


class _Held:
    """A request read while the client was not reading its answers (handled once it does), or
    beyond its connection's share of a loop turn (handled in a later turn)."""
    __slots__ = ("method", "url", "headers", "body")

    def __init__(self, method: str, url: bytes, headers: Dict[bytes, bytes], body: bytes):
        self.method, self.url, self.headers, self.body = method, url, headers, body


class Application:
    """What a connection serves: ``handle`` answers a request, ``render_error`` an error of
    the request itself (``request`` is None when it could not even be read)."""

    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    def render_error(self, error: RequestError, request: Optional[Request]) -> Response:
        raise NotImplementedError

    def answered(self, response: Response) -> None:
        """``response`` was just written (the query frontend polls for the next request)."""


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_date = [0, b""]


def _http_date() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[:] = now, formatdate(now, usegmt=True).encode()
    return _date[1]


def encode(response: Response, keep_alive: bool, head: bool = False) -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n%s%s\r\n%s" % (
        response.status, _REASONS.get(response.status, b""), response.content_type, len(response.body),
        _http_date(), response.headers, b"" if keep_alive else b"Connection: close\r\n",
        b"" if head else response.body)


_METHODS = {name.encode(): name for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}

# What a connection waits for, and so which deadline applies.
_REQUEST, _HEADERS, _BODY, _ANSWER, _IDLE = range(5)


class Connection(asyncio.Protocol):
    """One client connection; the parser's callbacks build one request at a time."""

    def __init__(self, app: Application, limits: Limits):
        self.app = app
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Optional[asyncio.Transport] = None
        self.answers: Deque = deque()     # [answer, keep_alive, head] in request order
        self.closing = False              # no more requests are read; close once answered
        self.lingering = False            # after a refusal: read and drop what still comes
        self.write_paused = False         # the client reads its answers slower than it asks
        self.reading_paused = False       # by us, for the two reasons above
        self.held = 0                     # requests in ``answers`` not handled yet (_Held)
        self.turn_share = MAX_HANDLED_PER_TURN   # requests it may still handle in this turn
        self.next_turn_asked = False
        self.state = _REQUEST
        self.timed_state = _REQUEST       # the state whose deadline runs (see data_received)
        self.deadline: Optional[float] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.timer_at = 0.0
        self.write_watch: Optional[asyncio.TimerHandle] = None   # see _watch_writes
        self.bytes_written = 0            # handed to the transport
        self.header_bytes = 0
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: Dict[bytes, bytes] = {}
        self.header_count = 0
        self.body: list = []
        self.body_size = 0
        self.chunks = 0

    # ---- connection ----
    def connection_made(self, transport) -> None:
        self.transport = transport
        self._wait(_REQUEST, self.limits.header_timeout)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.transport = None
        for timer in (self.timer, self.write_watch):
            if timer is not None:
                timer.cancel()
        self.timer = self.write_watch = None
        # What it read and will never handle goes now: the parser holds this protocol, a
        # cycle that only the collector breaks, and the frontends collect rarely (see
        # clipper/__main__.py). Kept, 400 clients that each sent 4 MB of a body and left
        # held 1.5 GB, for good. (Answers being made stay: their callbacks find them.)
        self._reset_message()
        self.parser = None
        if self.held:
            self.answers = deque(entry for entry in self.answers if type(entry[0]) is not _Held)
            self.held = 0

    def pause_writing(self) -> None:
        """The client does not read its answers: read no more requests, and hold those read
        already (_Held) until it does, so that small requests asking for large answers cannot
        pile up answers in memory without bound."""
        self.write_paused = True
        self._pause_reading()
        if self.write_watch is None:
            self._watch_writes()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._flush()

    def eof_received(self) -> bool:
        """A half-closed client (shutdown(SHUT_WR)) still reads: answer what it asked."""
        self.closing = True
        if not self.answers or self.lingering:
            return False                  # nothing asked (or half a request): close now
        return True                       # kept open for writing; closed once answered

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.turn_share = MAX_HANDLED_PER_TURN
        if self.state == _HEADERS:
            self.header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_reading()          # no protocol upgrades: answer, then close
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _Stop):   # a bug of ours, not the client's
                log.exception("reading a request failed")
                self._refuse(RequestError("Internal server error", 500))
        except httptools.HttpParserError as error:
            if not self.closing:
                self._refuse(RequestError(f"Malformed HTTP request: {error}", 400))
        if self.state == _HEADERS and self.header_bytes > MAX_HEADER_BYTES and not self.closing:
            self._refuse(RequestError(
                f"The request headers are larger than {MAX_HEADER_BYTES} bytes, the limit of this server",
                431))
        # The parser's callbacks only note what the connection waits for; its deadline starts
        # here, once, for a request that is still incomplete: most arrive whole in one read
        # and never need a header or body deadline (nor its timer).
        if self.state != self.timed_state:
            if self.state == _HEADERS:
                self._wait(_HEADERS, self.limits.header_timeout)
            elif self.state == _BODY:
                self._wait(_BODY, self.limits.body_timeout)

    # ---- parser callbacks ----
    def on_message_begin(self) -> None:
        if self.closing:                  # a request pipelined after the last one we answer
            raise _Stop
        self.header_bytes = 0             # the last message reset the rest when it completed
        self.state = _HEADERS

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_LINE_SIZE:
            self._refuse(RequestError(
                f"The request target is longer than {MAX_LINE_SIZE} bytes, the limit of this server", 414))
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > MAX_HEADERS or len(name) + len(value) + 2 > MAX_LINE_SIZE:
            self._refuse(RequestError(
                f"The request has a header line longer than {MAX_LINE_SIZE} bytes or more than "
                f"{MAX_HEADERS} headers, the limits of this server", 431))
            raise _Stop
        name = name.lower()
        if name in self.headers and name in LIST_HEADERS:
            value = self.headers[name] + b", " + value
        self.headers[name] = value

    def on_headers_complete(self) -> None:
        coding = self.headers.get(b"transfer-encoding")
        if coding is not None and coding.strip().lower() != b"chunked":
            # llhttp reads the chunks and leaves any other coding (gzip, chunked) undone.
            self._refuse(RequestError(
                f"Transfer-Encoding {coding.decode('latin-1')[:100]} is not supported: send the "
                "body chunked or with a Content-Length (and gzip it with Content-Encoding)", 501,
                "Not implemented"))
            raise _Stop
        length = self.headers.get(b"content-length")
        if length is not None and int(length) > self.limits.max_body_size:
            self._refuse(self._too_large())
            raise _Stop
        if self.headers.get(b"expect", b"").lower() == b"100-continue" and not self.answers:
            self.bytes_written += len(CONTINUE)
            self.transport.write(CONTINUE)
        self.state = _BODY

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.max_body_size:
            self._refuse(self._too_large())
            raise _Stop
        self.body.append(body)

    def on_chunk_header(self) -> None:
        # The chunks before this one have arrived whole: their average is known. (This one
        # may be the last, empty chunk: a body of FREE_CHUNKS chunks is free.)
        if self.chunks > FREE_CHUNKS and self.body_size < self.chunks * MIN_CHUNK_AVERAGE:
            self._refuse(RequestError(
                f"The chunked body has more than {FREE_CHUNKS} chunks averaging under "
                f"{MIN_CHUNK_AVERAGE} bytes: send larger chunks, or a Content-Length body", 400))
            raise _Stop
        self.chunks += 1

    def on_message_complete(self) -> None:
        # No upgrade (nor CONNECT) is made: its answer says the connection closes after it.
        keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()
        method = self.parser.get_method()
        method = _METHODS.get(method) or method.decode("ascii", "replace")
        self._wait(_ANSWER, None)
        if not keep_alive:
            self.closing = True           # read no request after this one
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        if self.write_paused or self.held or self.turn_share <= 0:   # (held ones go first)
            answer, request = _Held(method, self.url, self.headers, body), None
        else:
            self.turn_share -= 1
            answer, request = self._handle(method, self.url, self.headers, body)
        self._queue(answer, keep_alive, request, method == "HEAD")
        self._reset_message()

    def _handle(self, method: str, url: bytes, headers: Dict[bytes, bytes],
                body: bytes) -> Tuple[Answer, Optional[Request]]:
        request = None
        try:
            request = Request(method, _path(url), headers, self._decoded(body, headers), url)
            return self.app.handle(request), request
        except RequestError as error:
            return self.app.render_error(error, request), request
        except Exception:                # a bug of ours: logged, answered 500, connection kept
            log.exception("answering %s %r failed", method, url[:200])
            return self.app.render_error(RequestError("Internal server error", 500), request), request

    # ---- answers, in request order ----
    def _queue(self, answer: Answer, keep_alive: bool, request: Optional[Request] = None,
               head: bool = False) -> None:
        if type(answer) is Response and not self.answers:
            self._write(answer, keep_alive, head)
            self._after_write()
            return
        entry = [answer, keep_alive, head, request]
        self.answers.append(entry)
        self._track(entry)
        if len(self.answers) > MAX_QUEUED_ANSWERS and self.transport is not None:
            self._pause_reading()
        if type(answer) is not Deferred or answer.response is not None:
            self._flush()                 # else its settle() flushes it

    def _track(self, entry: list) -> None:
        """Have the answer of ``entry`` flushed when it is ready."""
        answer = entry[0]
        if type(answer) is Deferred:
            answer._on_settled = self._flush
        elif type(answer) is _Held:
            self.held += 1
        elif type(answer) is not Response:
            entry[0] = asyncio.ensure_future(answer)
            entry[0].add_done_callback(self._flush)

    def _handle_held(self) -> None:
        """Handle the held requests among the next MAX_QUEUED_ANSWERS, in order, as many as
        this turn's share allows; the others in the next turn."""
        for entry in itertools.islice(self.answers, MAX_QUEUED_ANSWERS):
            held = entry[0]
            if type(held) is _Held:
                if self.turn_share <= 0:
                    self._ask_next_turn()
                    return
                self.turn_share -= 1
                self.held -= 1
                entry[0], entry[3] = self._handle(held.method, held.url, held.headers, held.body)
                self._track(entry)

    def _ask_next_turn(self) -> None:
        if not self.next_turn_asked:
            self.next_turn_asked = True
            self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self.next_turn_asked = False
        self.turn_share = MAX_HANDLED_PER_TURN
        if self.transport is not None:
            self._flush()

    def _flush(self, _done=None) -> None:
        if self.held and not self.write_paused:
            self._handle_held()
        while self.answers:
            answer, keep_alive, head, request = self.answers[0]
            if type(answer) is _Held:
                if self.write_paused:
                    return
                self._handle_held()       # the next ones, now that those before are written
                if type(self.answers[0][0]) is _Held:
                    return                # this turn's share is used up: _next_turn goes on
                continue
            if type(answer) is Deferred:
                if answer.response is None:
                    return
                answer = answer.response
            elif type(answer) is not Response:
                if not answer.done():
                    return
                answer = self._outcome(answer, request)
            self.answers.popleft()
            self._write(answer, keep_alive, head)
            if not keep_alive:
                self.answers.clear()
        if self.reading_paused and self.transport is not None and not self.closing and not self.write_paused:
            self._resume_reading()
        self._after_write()

    def _pause_reading(self) -> None:
        self.reading_paused = True
        self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self.reading_paused = False
        self.transport.resume_reading()
        # A request begun while we did not read gets its whole time again: the wait was ours.
        if self.state == _HEADERS:
            self._wait(_HEADERS, self.limits.header_timeout)
        elif self.state == _BODY:
            self._wait(_BODY, self.limits.body_timeout)

    def _outcome(self, future: asyncio.Future, request: Optional[Request]) -> Response:
        if future.cancelled():
            error = RequestError("The request was cancelled: the server is stopping", 503)
        else:
            error = future.exception()
            if error is None:
                return future.result()
        if not isinstance(error, RequestError):      # a bug of ours, not the client's
            log.error("answering a request failed", exc_info=error)
            error = RequestError("Internal server error", 500)
        return self.app.render_error(error, request)

    def _write(self, response: Response, keep_alive: bool, head: bool) -> None:
        if self.transport is not None:
            data = encode(response, keep_alive and not self.closing, head)
            self.bytes_written += len(data)
            self.transport.write(data)
            self.app.answered(response)
            if not keep_alive:
                self.closing = True

    def _after_write(self) -> None:
        if self.answers or self.transport is None:
            return
        if self.closing:
            self._close()
        elif self.state == _ANSWER:
            self._wait(_IDLE, self.limits.keepalive_timeout)

    def _watch_writes(self, delivered_before: Optional[int] = None) -> None:
        """Cut off a client that takes none of its answers for keepalive_timeout: else what
        we hold for it stays for as long as it keeps the connection open, and a close waits
        for it to go. Checked every keepalive_timeout while our buffer holds answers, so the
        cut comes 1 to 2 times keepalive_timeout after the client last read; what the
        kernel's buffer holds, a few MB at most, is not watched."""
        self.write_watch = None
        if self.transport is None:
            return
        unsent = self.transport.get_write_buffer_size()
        if unsent == 0 and not self.write_paused:
            return
        delivered = self.bytes_written - unsent       # to the kernel, as the client reads
        if delivered_before is not None and delivered == delivered_before:
            log.info("closed a connection whose client read none of its answers for %g s "
                     "(%d bytes unsent)", self.limits.keepalive_timeout, unsent)
            self.transport.abort()
            return
        self.write_watch = self.loop.call_later(self.limits.keepalive_timeout, self._watch_writes, delivered)

    def _close(self) -> None:
        if self.write_watch is None:
            self._watch_writes()          # a client that never takes its answers is cut off
        if self.lingering and self.transport.can_write_eof():
            # The client may still be sending the body we refused: were it to find the socket
            # closed, its system would discard our answer. We end our side and drop the rest.
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def finish(self) -> None:
        """The server stops: answer what was asked, then close."""
        if self.transport is not None and not self.closing:
            self._stop_reading()

    # ---- refusals and timeouts ----
    def _refuse(self, error: RequestError) -> None:
        """Answer an unreadable request (after those before it) and read no more."""
        self.closing = self.lingering = True
        self._wait(_ANSWER, None)
        self._queue(self.app.render_error(error, None), False)

    def _stop_reading(self) -> None:
        """Read nothing more; close once every request read so far is answered."""
        self.closing = True
        self._wait(_ANSWER, None)
        if self.transport is not None:
            if self.answers:
                self._pause_reading()
            else:
                self._close()

    def _too_large(self) -> RequestError:
        return body_too_large(self.limits.max_body_size)

    def _decoded(self, body: bytes, headers: Dict[bytes, bytes]) -> bytes:
        """The body without its Content-Encoding, still within the body limit."""
        encoding = headers.get(b"content-encoding")
        if encoding is None or not body:
            return body
        encoding = encoding.strip().lower()
        if encoding == b"identity":
            return body
        if encoding not in DECODERS:
            raise RequestError(f"Content-Encoding {encoding.decode('latin-1')} is not supported: "
                               "send the body as it is, or gzip or deflate it", 415)
        wbits = DECODERS[encoding]
        rest, decoded, size = memoryview(body), [], 0
        while rest:
            if len(decoded) == MAX_GZIP_MEMBERS:
                raise RequestError("The request body could not be decoded: it has more than "
                                   f"{MAX_GZIP_MEMBERS} gzip members; send it as one")
            stream, length = self._decode_stream(rest, wbits, self.limits.max_body_size - size)
            decoded.append(stream)
            size += len(stream)
            rest = rest[length:]
            if rest and wbits != GZIP_WBITS:   # gzip may have several members (RFC 1952), deflate not
                raise RequestError("The request body could not be decoded: data follows the end of "
                                   "its deflate stream")
        return b"".join(decoded)

    def _decode_stream(self, body: memoryview, wbits: int, room: int) -> Tuple[bytes, int]:
        """The first stream (gzip member) of ``body``, decoded within ``room`` bytes, and its
        length in ``body``. It is fed in slices that double: zlib copies what follows the end
        of a stream, and fed whole, 4 MiB of tiny gzip members was copied once for each (31 s)."""
        decoder = zlib.decompressobj(wbits)
        decoded, fed, step = [], 0, FIRST_DECODE_SLICE
        while not decoder.eof and fed < len(body):
            piece = body[fed:fed + step]
            try:
                decoded.append(decoder.decompress(piece, room + 1))
            except zlib.error as error:
                raise RequestError(f"The request body could not be decoded: {error}") from None
            room -= len(decoded[-1])
            if room < 0:
                raise self._too_large()
            fed += len(piece)
            step *= 2
        if not decoder.eof:
            raise RequestError("The request body could not be decoded: it ends too early")
        return b"".join(decoded), fed - len(decoder.unused_data)

    def _wait(self, state: int, seconds: Optional[float]) -> None:
        """From now on wait for ``state``, for at most ``seconds`` (None: no limit)."""
        self.state = self.timed_state = state
        if seconds is None:
            self.deadline = None
            return
        self.deadline = self.loop.time() + seconds
        if self.timer is not None and self.timer_at > self.deadline:
            self.timer.cancel()
            self.timer = None
        if self.timer is None:
            self._arm(self.deadline)

    def _arm(self, when: float) -> None:
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.deadline is None or self.transport is None:
            return
        if self.loop.time() < self.deadline:
            self._arm(self.deadline)
        elif self.reading_paused and self.state in (_HEADERS, _BODY):
            pass                          # we do not read it: timed again when we do
        elif self.state == _BODY:
            self._refuse(RequestError(
                f"The request body did not arrive within {self.limits.body_timeout:g} s", 408))
        elif self.state == _HEADERS:
            self._refuse(RequestError(
                f"The request headers did not arrive within {self.limits.header_timeout:g} s", 408))
        else:                             # nothing asked: a new or idle connection
            self._close()


class _Stop(Exception):
    """Raised in a parser callback: this connection reads no further."""


@functools.lru_cache(maxsize=256)     # clients ask for the same few targets again and again
def _path(url: bytes) -> str:
    """The path of a request target (origin form, or absolute form for proxies), as sent:
    routed as Clipper did, without percent-decoding (decoded, /d%2Fpredict reached app d's
    predict route, past a proxy's rules that looked at the path as sent)."""
    path = url.decode("utf-8", "replace")       # a str is searched faster than bytes
    if "?" in path or "#" in path or not path.startswith("/"):
        try:
            path = (httptools.parse_url(url).path or b"/").decode("utf-8", "replace")
        except httptools.HttpParserInvalidURLError:
            raise RequestError(f"The request target {url[:100]!r} is not a URL") from None
    return path


class Server:
    """The listening socket and its connections."""

    def __init__(self, app: Application, limits: Limits):
        self.app = app
        self.limits = limits
        self.connections: "weakref.WeakSet[Connection]" = weakref.WeakSet()
        self.listener: Optional[asyncio.AbstractServer] = None

    def _connection(self) -> Connection:
        connection = Connection(self.app, self.limits)
        self.connections.add(connection)
        return connection

    async def start(self, host: str, port: int, backlog: int = 1024,
                    reuse_port: bool = False) -> "Server":
        """``reuse_port``: several processes listen on the port; the kernel spreads connections."""
        self.listener = await asyncio.get_running_loop().create_server(
            self._connection, host, port, backlog=backlog, reuse_port=reuse_port or None)
        return self

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening, answer what was asked (within ``grace`` seconds), close."""
        self.listener.close()
        for connection in list(self.connections):
            connection.finish()
        deadline = asyncio.get_running_loop().time() + grace
        while any(c.transport is not None for c in self.connections):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
