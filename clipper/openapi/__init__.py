"""OpenAPI descriptions of the two REST APIs, kept here as JSON and served at /openapi.json."""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def document(api: str) -> bytes:
    """``api``: "query" or "management"."""
    return (HERE / f"{api}.json").read_bytes()


def route(api: str):
    """The aiohttp route of the management API's description (the query frontend serves
    its own without aiohttp)."""
    from aiohttp import web
    body = document(api)

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")
    return web.get("/openapi.json", serve)
