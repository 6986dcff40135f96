"""The floor: an HTTP server that parses the same JSON as a prediction and sums it.

    python bench/floor_server.py bare 21400      # uvloop + httptools, no framework
    python bench/floor_server.py aiohttp 21401   # the HTTP stack our query frontend uses

What our cluster adds over the first is the price of Clipper's serving (routing, queues,
batching, RPC to a model process); over the second, the same minus the HTTP framework.
"""
import asyncio
import sys

import httptools
import orjson
import uvloop
from aiohttp import web


def answer(body: bytes) -> bytes:
    total = sum(orjson.loads(body)["input"])
    return orjson.dumps({"query_id": 0, "output": total, "default": False})


class BareHttp(asyncio.Protocol):
    """HTTP/1.1 keep-alive with httptools' parser; enough for POST bodies from wrk."""

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.body = []

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        payload = answer(b"".join(self.body))
        self.body = []
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))


async def serve_bare(port):
    server = await asyncio.get_running_loop().create_server(BareHttp, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


def serve_aiohttp(port):
    async def predict(request):
        return web.Response(body=answer(await request.read()), content_type="application/json")
    app = web.Application()
    app.router.add_post("/{app}/predict", predict)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    loop_kind = sys.argv[3] if len(sys.argv) > 3 else "uvloop"
    if loop_kind == "uvloop":
        uvloop.install()
    if kind == "bare":
        asyncio.run(serve_bare(port))
    else:
        serve_aiohttp(port)
