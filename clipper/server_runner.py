"""Run an aiohttp application until SIGTERM/SIGINT; one clear line if the port is taken."""
import asyncio
import errno
import logging
import signal
import sys

from aiohttp import web

from clipper import eventloop

log = logging.getLogger("clipper")


def configure_logging(role: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")


async def _serve(app: web.Application, host: str, port: int, role: str) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
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


def serve(app: web.Application, host: str, port: int, role: str) -> None:
    eventloop.run(_serve(app, host, port, role))
