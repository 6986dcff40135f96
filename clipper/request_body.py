"""Reading a request body safely: JSON content type, bounded size, bounded time.

The content-type check is shared by both frontends; ``read_json_body`` is the management
frontend's (aiohttp); the query frontend's HTTP layer reads bodies itself. Each API renders
a BodyError in its own format.
"""
import asyncio
from typing import TYPE_CHECKING, Optional, Union

from clipper.errors import RequestError

if TYPE_CHECKING:
    from aiohttp import web

JSON_MEDIA_TYPES = ("application/json",)


class BodyError(RequestError):
    def __init__(self, status: int, message: str, kind: Optional[str] = None):
        super().__init__(message, status=status, kind=kind)


def body_too_large(limit: int) -> BodyError:
    """413, saying which setting raises the limit (Clipper had none: its examples send more)."""
    return BodyError(413, f"The request body is larger than {limit} bytes, the limit of this "
                          "server: send less, or start the cluster with a larger max_body_size "
                          "(a parameter of the container manager, e.g. "
                          "LocalContainerManager(max_body_size=64 * 1024 * 1024))", "Body too large")


def check_json_media_type(content_type: Optional[Union[str, bytes]]) -> None:
    """Refuse (415) a body that says it is not JSON; a body that says nothing is read as JSON."""
    if content_type is None or content_type == b"application/json":
        return
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type:               # an empty header says nothing either
        return
    if not (media_type in JSON_MEDIA_TYPES or media_type.endswith("+json")):
        raise BodyError(415, f"Content-Type {media_type} is not supported: send JSON with "
                             "Content-Type: application/json")


async def read_json_body(request: "web.Request", timeout: float) -> bytes:
    """The raw body of a JSON request, or BodyError with a 4xx status that says what to fix."""
    from aiohttp import web      # only the management frontend reads bodies through aiohttp
    check_json_media_type(request.headers.get("Content-Type"))
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except web.HTTPRequestEntityTooLarge:
        raise body_too_large(request.client_max_size) from None
    except asyncio.TimeoutError:
        raise BodyError(408, f"The request body did not arrive within {timeout:g} s") from None
    except ConnectionError as error:
        # The client left before its whole body came: nobody reads this answer, and it is
        # no error of ours (it was logged as one, with its traceback, once per request).
        # Its traceback holds the frame that holds the body read so far, and the request
        # holds the error: a cycle, which the frontends' rare collections left for long.
        error.__traceback__ = None
        raise BodyError(400, "The client closed the connection before its body arrived") from None
    except web.RequestPayloadError as error:
        # A body aiohttp cannot decode (Content-Encoding: gzip over bytes that are not gzip,
        # broken chunked framing); unhandled, it was a 500.
        cause = error.__cause__ or error
        raise BodyError(400, "The request body could not be decoded: "
                             f"{getattr(cause, 'message', '') or cause}") from None
