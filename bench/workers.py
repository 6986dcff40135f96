"""Query frontend workers: the same cluster with 1, 2, ... query frontend processes, one run.

    python bench/workers.py [--workers 1 2 4] [--clients 64] [--seconds 5] [--rounds 2]

For each worker count, our cluster (cache off, the sum model of bench/run.py, 200 doubles
per query) is started, warmed up and loaded by wrk at ``--clients`` connections; the rounds
alternate the counts so that the machine's other load falls on each alike, and the best
round counts. Also reported: the model's mean batch size (from /metrics, which sums every
worker's). Prints a Markdown table and writes bench/results/<date>-workers.md and .json.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import servers  # noqa: E402
from load import wrk  # noqa: E402
from clipper_admin.deployers import python as python_deployer  # noqa: E402


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def mean_batch_size() -> float:
    port = servers.CLUSTER_PORTS["clipper_query_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        document = json.load(response)
    return next(float(entry[name]["mean"]) for entry in document["histograms"]
                for name in entry if name.endswith(":batch_size"))


def measure(workers: int, clients: int, seconds: int) -> dict:
    with servers.cluster(cache_size=0, query_workers=workers) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", feature_sum, slo_micros=1_000_000)
        url = servers.app_url("sum")
        wrk(url, clients, max(1, seconds // 2))          # warm-up
        point = wrk(url, clients, seconds)
        point["mean_batch"] = mean_batch_size()          # over warm-up and measurement
        return point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    best = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as state_dir:
        os.environ["CLIPPER_STATE_DIR"] = state_dir
        for _ in range(args.rounds):
            for workers in args.workers:
                point = measure(workers, args.clients, args.seconds)
                if workers not in best or point["rps"] > best[workers]["rps"]:
                    best[workers] = point
    base = best[args.workers[0]]["rps"]
    lines = [f"Query frontend workers, {args.clients} clients, cache off, best of {args.rounds} "
             f"rounds of {args.seconds} s, {os.cpu_count()} cores (wrk on the same machine)", "",
             "| workers | req/s | vs first | p50 ms | p99 ms | failed | mean batch |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for workers, p in best.items():
        lines.append(f"| {workers} | {p['rps']:,.0f} | {p['rps'] / base:.2f}x | {p['p50_us'] / 1000:.2f} "
                     f"| {p['p99_us'] / 1000:.2f} | {p['failed']} | {p['mean_batch']:.1f} |")
    text = "\n".join(lines)
    print(text)
    stem = HERE / "results" / f"{datetime.date.today().isoformat()}-workers"
    stem.parent.mkdir(exist_ok=True)
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps({str(k): v for k, v in best.items()}, indent=1))


if __name__ == "__main__":
    main()
