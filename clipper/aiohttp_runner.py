"""Serving an aiohttp application (the management API): start, stop, half-closed clients."""
from typing import Callable

from aiohttp import web


class _HalfCloseAnswered(web.RequestHandler):
    """aiohttp closes a connection as soon as the client half-closes it (shutdown(SHUT_WR),
    legal in HTTP/1.1), so a request sent that way was never answered: answer it, then close."""

    def eof_received(self) -> bool:
        if not self._messages and self._waiter is not None and not self._waiter.done():
            return False                   # idle: nothing was asked, close now
        if not self._messages:
            self.close()                   # close once the request being handled is answered
        return True                        # (queued pipelined requests: closed when idle)


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


