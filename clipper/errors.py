"""Errors as data: what a client did wrong (or what is unavailable), with its HTTP status.

Request handlers raise ``RequestError`` (or a subclass); each REST API renders it in one
place, in its own format: the query API as Clipper's ``{"error": ..., "cause": ...}`` JSON,
the management API as plain text. Anything else that escapes a handler is a bug of ours:
it is logged and answered 500, never passed off as the client's fault.
"""
from typing import Mapping, Optional


# The query API's "error" field for statuses raised without a kind of their own, so that
# none but a 400 is labelled "Bad request".
STATUS_KINDS = {408: "Request timeout", 414: "Request target too long", 415: "Unsupported media type",
                431: "Request headers too large", 500: "Internal server error", 503: "Service unavailable"}


class RequestError(Exception):
    """A request that cannot be served as sent; ``message`` says what to fix."""

    status = 400
    kind = "Bad request"           # the query API's "error" field

    def __init__(self, message: str, status: Optional[int] = None, kind: Optional[str] = None,
                 headers: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        elif status in STATUS_KINDS:
            self.kind = STATUS_KINDS[status]
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return self.message


class Unavailable(RequestError):
    """A dependency (Redis) is away; the message says whether anything was changed."""

    status = 503
    kind = "Service unavailable"
