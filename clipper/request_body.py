"""Reading a request body safely: JSON content type, bounded size, bounded time.

Shared by both frontends; each turns BodyError into its own error format.
"""
import asyncio

from aiohttp import web

from clipper.errors import RequestError

JSON_MEDIA_TYPES = ("application/json",)


class BodyError(RequestError):
    def __init__(self, status: int, message: str):
        super().__init__(message, status=status)


async def read_json_body(request: web.Request, timeout: float) -> bytes:
    """The raw body of a JSON request, or BodyError with a 4xx status that says what to fix."""
    media_type = request.content_type
    # aiohttp reports a missing Content-Type as application/octet-stream.
    if "Content-Type" in request.headers and not (
            media_type in JSON_MEDIA_TYPES or media_type.endswith("+json")):
        raise BodyError(415, f"Content-Type {media_type} is not supported: send JSON with "
                             "Content-Type: application/json")
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(413, f"The request body is larger than {request.client_max_size} bytes, "
                             "the limit of this server") from None
    except asyncio.TimeoutError:
        raise BodyError(408, f"The request body did not arrive within {timeout:g} s") from None
    except web.RequestPayloadError as error:
        # A body aiohttp cannot decode (Content-Encoding: gzip over bytes that are not gzip,
        # broken chunked framing); unhandled, it was a 500.
        cause = error.__cause__ or error
        raise BodyError(400, "The request body could not be decoded: "
                             f"{getattr(cause, 'message', '') or cause}") from None
