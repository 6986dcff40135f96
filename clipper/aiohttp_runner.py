"""Serving an aiohttp application (the management API): start, stop, half-closed clients."""
from typing import Callable

from aiohttp import web


class _HalfCloseAnswered(web.RequestHandler):
    """aiohttp closes a connection as soon as the client half-closes it (shutdown(SHUT_WR),
    legal in HTTP/1.1), so a request sent that way was never answered: answer it, then close."""

    _half_closed = False

    def eof_received(self) -> bool:
        if not self._messages and self._waiter is not None and not self._waiter.done():
            return False                   # idle: nothing was asked, close now
        if self._body_cut_short():
            # The rest of a body can no longer come: close now (its handler stops), rather
            # than wait out the body timeout holding what came (300 s: clients that each
            # sent 4 MB, half-closed and left, held 7 MB each of the management frontend).
            return False
        if not self._messages:
            self.close()                   # close once the request being handled is answered
        self._half_closed = True           # (pipelined ones queued: once the last is answered)
        return True

    async def _handle_request(self, request, start_time, request_handler):
        outcome = await super()._handle_request(request, start_time, request_handler)
        if self._half_closed and not self._messages:
            self.close()       # the client's last request is answered: it kept the connection a minute
        return outcome

    def _body_cut_short(self) -> bool:
        """A request read, or being answered, whose body has not all arrived."""
        current = self._current_request
        return ((current is not None and not current.content.is_eof())
                or any(not payload.is_eof() for _, payload in self._messages))


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _HalfCloseAnswered(self, loop=self._loop, **self._kwargs)


class _AppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server     # aiohttp offers no parameter for the handler class
        return server


class _AiohttpServer:
    def __init__(self, runner: web.AppRunner):
        self.runner = runner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(build_app: Callable[[], web.Application], host: str, port: int) -> _AiohttpServer:
    # Idle keep-alive connections are closed after a minute, not aiohttp's hour.
    runner = _AppRunner(build_app(), access_log=None, handle_signals=False, keepalive_timeout=60)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError:
        await runner.cleanup()
        raise
    return _AiohttpServer(runner)


