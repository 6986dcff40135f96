"""The query frontend's own Python cost per request, in process: no sockets, no other process.

    python bench/inprocess.py [--requests 20000]

An HTTP request (200 doubles) is fed to the query frontend's connection as if read from a
socket; its answer is written to a list. A cache hit never leaves the frontend; for a query
that reaches the model, the replica's reply is settled in place (encoded as a container
encodes it), so the batch bookkeeping and the RPC decoding count, the round trip does not;
once one query a batch, and once as under load, 32 clients whose queries make one batch.
The floor is bench/floor_server.py's handler fed the same bytes. Prints microseconds per
request, best of 9 slices, and the ratios to the floor: what our Python adds, apart from
system calls and the scheduler. Also the parse of a body alone (a new body each time, as
under load), by the general path (orjson, then struct) and by the flat-doubles path
(simdjson straight into packed doubles) that the query frontend takes for such a body.
"""
import argparse
import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import floor_server  # noqa: E402
from clipper import eventloop  # noqa: E402
from clipper.config import Config  # noqa: E402
from clipper.datatypes import InputType  # noqa: E402
from clipper.query_frontend import http, server  # noqa: E402
from clipper.query_frontend.dispatch import BatchSizer, Dispatcher, Replica  # noqa: E402
from clipper.redis_schema import App, Model  # noqa: E402
from clipper.rest import inputs  # noqa: E402
from clipper.rpc import codec  # noqa: E402

SLICES = 9
BATCH_CLIENTS = 32          # under load at 64 clients, batches hold about 32 queries


def request(first_value: str) -> bytes:
    body = ('{"input": [%s,' % first_value + ",".join("%.17g" % (i / 7) for i in range(1, 200)) + "]}").encode()
    return (b"POST /bench/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


class Transport:
    """What a connection writes to: kept, for the last answer to be checked."""

    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        pass


async def per_request(make_connection, requests, count, reply=None, clients=1) -> float:
    """Microseconds per request, the best of SLICES slices of ``count`` requests: each round,
    ``clients`` connections send one request each, ``reply`` (if any) answers the batch they
    made, and the event loop turns once."""
    connections = []
    for _ in range(clients):
        connection, transport = make_connection(), Transport()
        connection.connection_made(transport)
        connections.append((connection, transport))
    rounds = count // SLICES // clients
    best, sent = float("inf"), 0
    for _ in range(SLICES):
        started = time.perf_counter()
        for _ in range(rounds):
            for connection, _transport in connections:
                connection.data_received(requests[sent % len(requests)])
                sent += 1
            if reply:
                reply()
            await asyncio.sleep(0)
        best = min(best, time.perf_counter() - started)
        for _connection, transport in connections:
            assert b'"default":false' in transport.written[-1], transport.written[-1][-200:]
            transport.written.clear()
    return best / (rounds * clients) * 1e6


def frontend(cache_size: int):
    """A query frontend whose view holds the app and model, with one replica in place."""
    config = Config(cache_size=cache_size)
    frontend = server.QueryFrontend(config)
    frontend.loop = asyncio.get_running_loop()
    frontend.deadlines = server.Deadlines(frontend.loop)
    frontend.dispatcher = Dispatcher(frontend.rpc.send_batch, time.monotonic, frontend._on_batch)
    frontend.rpc.attach(frontend.dispatcher)
    frontend.rpc._loop = frontend.loop
    frontend.rpc._send = lambda identity, frames: True          # the batch goes nowhere ...
    view = frontend.follower.view
    view.apps["bench"] = App("bench", "doubles", "-1.0", 1_000_000)
    view.links["bench"] = ["sum"]
    view.current_versions["sum"] = "1"
    view.models[("sum", "1")] = Model("sum", "1", "doubles", (), "image", "", -1)
    # As the state follower tells it of them: their metrics are made at registration.
    frontend._on_app_change("bench", view.apps["bench"])
    frontend._on_model_change(("sum", "1"), view.models[("sum", "1")])
    replica = Replica(b"replica", ("sum", "1"), 0, InputType.DOUBLES, BatchSizer(), frontend.loop.time())
    frontend.rpc.replicas[replica.identity] = replica
    frontend.dispatcher.add_replica(replica)

    def reply():                                                 # ... and is answered here
        for msg_id, batch in list(frontend.dispatcher.in_flight.items()):
            frontend.rpc.on_message(replica.identity, codec.encode_prediction_response(
                msg_id, [b"12.5"] * len(batch.tasks)))
    limits = http.Limits(config.max_body_size, 10, 10, 60)
    return lambda: http.Connection(frontend, limits), reply


def parse_cost(parse, bodies) -> float:
    """Microseconds per body, the best of SLICES passes over all of them."""
    best = float("inf")
    for _ in range(SLICES):
        started = time.perf_counter()
        for body in bodies:
            parse(body)
        best = min(best, time.perf_counter() - started)
    return best / len(bodies) * 1e6


async def main(count: int) -> None:
    fixed = [request("0")]
    distinct = [request("%d.5" % i) for i in range(count)]
    floor = await per_request(floor_server.BareHttp, fixed, count)
    connection, reply = frontend(cache_size=100_000_000)
    hit = await per_request(connection, fixed, count, reply)
    connection, reply = frontend(cache_size=0)
    miss = await per_request(connection, distinct, count, reply)
    print(f"Python per request, in process (best of {SLICES} slices of {count // SLICES}):")
    print(f"  floor (bare httptools handler)        {floor:6.1f} us")
    print(f"  ours, cache hit                       {hit:6.1f} us  {hit / floor:4.1f}x the floor")
    print(f"  ours, to the model and back, no cache {miss:6.1f} us  {miss / floor:4.1f}x the floor")
    connection, reply = frontend(cache_size=0)
    batched = await per_request(connection, distinct, count, reply, BATCH_CLIENTS)
    print(f"  the same, {BATCH_CLIENTS} clients, one batch       {batched:6.1f} us  {batched / floor:4.1f}x the floor")
    bodies = [r.partition(b"\r\n\r\n")[2] for r in distinct]
    general = parse_cost(lambda body: inputs._parse_document(body, InputType.DOUBLES, None), bodies)
    flat = parse_cost(lambda body: inputs.parse_predict_body(body, InputType.DOUBLES), bodies)
    print(f"Parsing a body of 200 doubles into the input a container receives ({len(bodies)} bodies):")
    print(f"  general path (orjson, struct)         {general:6.1f} us")
    print(f"  flat doubles (simdjson)               {flat:6.1f} us  {flat / general:4.2f}x the general path")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    eventloop.run(main(parser.parse_args().requests))
