"""The one place that picks the event loop: uvloop when installed, plain asyncio otherwise."""
import asyncio
from typing import Awaitable

try:
    import uvloop
except ImportError:  # pragma: no cover - depends on the platform
    uvloop = None


def run(main: Awaitable) -> None:
    if uvloop is not None:
        uvloop.run(main)
    else:
        asyncio.run(main)


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return uvloop is not None and isinstance(loop, uvloop.Loop)
