"""Soak: 64 concurrent clients against a local cluster; no failed request, flat memory.

    python bench/soak.py                 # 60 s, as the reliability target says
    python bench/soak.py --seconds 10    # what CI runs

Starts its own cluster (ports 61337/61338/61700/61390, own state directory), warms it up,
records the RSS of every cluster process, runs the load, records RSS again, stops the
cluster. Exit code 0 only if no request failed and no process grew more than 10%.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipper_admin import ClipperConnection, LocalContainerManager  # noqa: E402
from clipper_admin.deployers import python as python_deployer  # noqa: E402

MAX_GROWTH = 0.10
DISTINCT_INPUTS = 2000


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


async def load(url, clients, seconds, inputs):
    """Closed loop: each client sends its next query when the previous one is answered."""
    counts = {"ok": 0, "failed": 0}
    stop = time.monotonic() + seconds

    async def client(session):
        while time.monotonic() < stop:
            try:
                async with session.post(url, json={"input": random.choice(inputs)}) as response:
                    body = await response.json()
                    ok = response.status == 200 and "output" in body
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                ok = False
            counts["ok" if ok else "failed"] += 1

    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return counts


def rss_by_process(conn):
    sizes = {}
    for record in conn.cm.cluster.processes():
        try:
            sizes[record["name"]] = psutil.Process(record["pid"]).memory_info().rss
        except psutil.Error:
            pass
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args(argv)
    if "CLIPPER_STATE_DIR" in os.environ:
        return soak(args)
    with tempfile.TemporaryDirectory(prefix="soak-") as state_dir:
        os.environ["CLIPPER_STATE_DIR"] = state_dir
        return soak(args)


def soak(args):
    manager = LocalContainerManager(cluster_name="soak", clipper_query_port=61337,
                                    clipper_management_port=61338, clipper_rpc_port=61700,
                                    clipper_metric_port=61390)
    conn = ClipperConnection(manager)
    # The cache is off so that every query takes the whole path: HTTP, queue, batch, RPC, model.
    conn.start_clipper(cache_size=0)
    try:
        python_deployer.create_endpoint(conn, "soak", "doubles", feature_sum, slo_micros=1_000_000)
        url = f"http://{conn.get_query_addr()}/soak/predict"
        inputs = [[random.random() for _ in range(200)] for _ in range(DISTINCT_INPUTS)]
        warmup = asyncio.run(load(url, args.clients, args.warmup, inputs))
        before = rss_by_process(conn)
        counts = asyncio.run(load(url, args.clients, args.seconds, inputs))
        after = rss_by_process(conn)
    finally:
        conn.stop_all()
    growth = {name: after[name] / before[name] - 1 for name in before if name in after}
    report = {"seconds": args.seconds, "clients": args.clients, "requests": counts["ok"] + counts["failed"],
              "failed": counts["failed"] + warmup["failed"],
              "requests_per_second": round(counts["ok"] / args.seconds),
              "rss_mib_before": {k: round(v / 2 ** 20, 1) for k, v in before.items()},
              "rss_mib_after": {k: round(v / 2 ** 20, 1) for k, v in after.items()},
              "rss_growth": {k: round(v, 4) for k, v in growth.items()},
              "restarted": sorted(set(before) ^ set(after))}
    print(json.dumps(report, indent=2))
    healthy = not report["failed"] and not report["restarted"] and \
        all(g <= MAX_GROWTH for g in growth.values())
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
