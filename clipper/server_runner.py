"""Run an aiohttp application until SIGTERM/SIGINT; one clear line if the port is taken."""
import asyncio
import errno
import logging
import signal
from typing import Callable

from aiohttp import web

from clipper import eventloop
from clipper.config import is_loopback

log = logging.getLogger("clipper")


def warn_if_exposed(host: str, role: str) -> None:
    if not is_loopback(host):
        log.warning("%s listens on %s, beyond this machine: anyone who reaches the management "
                    "API can deploy pickled code that runs here. Set an admin token and a firewall.",
                    role, host)


async def _serve(build_app: Callable[[], web.Application], host: str, port: int, role: str) -> None:
    warn_if_exposed(host, role)
    app = build_app()
    # Idle keep-alive connections are closed after a minute, not aiohttp's hour.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=60)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError as error:
        await runner.cleanup()
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
    await runner.cleanup()


def serve(build_app: Callable[[], web.Application], host: str, port: int, role: str) -> None:
    """``build_app`` runs inside the loop: on Python 3.9, queues and events made before it
    starts are bound to another loop."""
    eventloop.run(_serve(build_app, host, port, role))
