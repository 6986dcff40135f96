"""Run an aiohttp application until SIGTERM/SIGINT; one clear line if the port is taken."""
import asyncio
import errno
import ipaddress
import logging
import signal
import socket
import sys
from typing import Awaitable, Callable

from aiohttp import web

from clipper import eventloop

log = logging.getLogger("clipper")


def configure_logging(role: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")


def warn_if_exposed(host: str, role: str) -> None:
    if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
        log.warning("%s listens on %s, beyond this machine: anyone who reaches the management "
                    "API can deploy pickled code that runs here. Set an admin token and a firewall.",
                    role, host)


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


async def serve_until_stopped(start: Callable[[], Awaitable[object]], host: str, port: int,
                              role: str) -> None:
    """``await start()`` begins serving and returns what to ``await stop()`` on SIGTERM/SIGINT;
    a port already in use ends the process with one clear line."""
    warn_if_exposed(host, role)
    try:
        server = await start()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise SystemExit(f"{role}: port {port} on {host} is already in use "
                             "(is another Clipper cluster running? stop it with: python closeClipper.py)")
        raise
    log.info("%s listening on http://%s:%d", role, host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("%s stopping", role)
    await server.stop()


class _AiohttpServer:
    def __init__(self, runner: web.AppRunner):
        self.runner = runner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def _start_aiohttp(build_app: Callable[[], web.Application], host: str, port: int) -> _AiohttpServer:
    # Idle keep-alive connections are closed after a minute, not aiohttp's hour.
    runner = _AppRunner(build_app(), access_log=None, handle_signals=False, keepalive_timeout=60)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError:
        await runner.cleanup()
        raise
    return _AiohttpServer(runner)


def serve(build_app: Callable[[], web.Application], host: str, port: int, role: str) -> None:
    """``build_app`` runs inside the loop: on Python 3.9, queues and events made before it
    starts are bound to another loop."""
    eventloop.run(serve_until_stopped(lambda: _start_aiohttp(build_app, host, port), host, port, role))
