"""The peer: Ray Serve answering the same prediction with the same function.

Runs in the benchmark's own venv (bench/setup-peer.sh), started by bench/servers.py:
    <ray venv>/bin/python bench/ray_peer.py <port> <scratch dir> [<max ongoing requests per replica>]
Ray's throughput-optimized mode is chosen by its environment variables
(RAY_SERVE_THROUGHPUT_OPTIMIZED=1, RAY_SERVE_ENABLE_HA_PROXY=1), set by bench/servers.py.
"""
import sys
import time

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment
class Sum:
    async def __call__(self, request: Request):
        body = await request.json()
        return {"query_id": 0, "output": sum(body["input"]), "default": False}


if __name__ == "__main__":
    port, scratch = int(sys.argv[1]), sys.argv[2]
    options = {"max_ongoing_requests": int(sys.argv[3])} if len(sys.argv) > 3 else {}
    # A new local Ray instance of our own (never one found running), its files in our scratch dir.
    ray.init(address="local", _temp_dir=scratch, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Sum.options(**options).bind(), route_prefix="/")
    print("ready", flush=True)
    while True:
        time.sleep(3600)
