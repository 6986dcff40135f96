"""Run a server until SIGTERM/SIGINT; one clear line if the port is taken."""
import asyncio
import errno
import logging
import signal
from typing import Awaitable, Callable

from clipper import eventloop
from clipper.config import is_loopback

log = logging.getLogger("clipper")

# Where the hard limit on open files is "unlimited", the most to ask for.
MAX_OPEN_FILES = 1 << 20


def warn_if_exposed(host: str, role: str) -> None:
    if not is_loopback(host):
        log.warning("%s listens on %s, beyond this machine: anyone who reaches the management "
                    "API can deploy pickled code that runs here. Set an admin token and a firewall.",
                    role, host)


def raise_open_file_limit() -> None:
    """Take the hard limit on open files, not the soft one (often 1,024): every connection
    holds a file descriptor, so a local process holding a thousand idle or slow connections
    would otherwise leave the server unable to accept anyone else."""
    try:
        import resource
    except ImportError:      # pragma: no cover - Windows has no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:   # macOS caps it below the hard limit
            log.info("could not raise the open-file limit from %d: %s", soft, error)


async def serve_until_stopped(start: Callable[[], Awaitable[object]], host: str, port: int,
                              role: str) -> None:
    """``await start()`` begins serving and returns what to ``await stop()`` on SIGTERM/SIGINT;
    a port already in use ends the process with one clear line."""
    warn_if_exposed(host, role)
    raise_open_file_limit()
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


def serve(build_app, host: str, port: int, role: str) -> None:
    """Serve an aiohttp application; ``build_app`` runs inside the loop (on Python 3.9, queues
    and events made before it starts are bound to another loop). aiohttp is imported only
    here: the query frontend does without it."""
    from clipper.aiohttp_runner import start
    eventloop.run(serve_until_stopped(lambda: start(build_app, host, port), host, port, role))
