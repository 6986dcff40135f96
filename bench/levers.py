"""Each performance lever on its own: the query frontend of several git revisions, in one run.

    python bench/levers.py base=main lean-http=abc123 this=WORKTREE [--seconds 10] [--hits] [--replicas N] [--tag NAME]

Every revision's tree is exported (git archive; WORKTREE is this checkout as it is) and
runs its own cluster, cache off, with the same sum model, on its own port block; wrk then
loads them in turns, 1 client for all, then 64 clients for all, so that the machine's
other load falls on every revision alike. The bare floor is measured in the same run.
--hits: the cache on (32 MiB) and every request the same, so all but the first are hits.
--replicas N: the model runs N replicas (1).
Prints a Markdown table and writes bench/results/<date>-levers[-NAME].md and .json.
"""
import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from revisions import export  # noqa: E402
import servers  # noqa: E402
from load import wrk  # noqa: E402

CLUSTER_SCRIPT = """
import sys, time
from clipper_admin import ClipperConnection, LocalContainerManager
from clipper_admin.deployers import python as python_deployer

def feature_sum(xs):
    return [str(sum(x)) for x in xs]

base = int(sys.argv[1])
conn = ClipperConnection(LocalContainerManager(
    cluster_name=f"lever{base}", clipper_query_port=base + 1, clipper_management_port=base + 2,
    clipper_rpc_port=base + 3, clipper_metric_port=base + 4))
conn.start_clipper(cache_size=int(sys.argv[2]))
try:
    python_deployer.create_endpoint(conn, "sum", "doubles", feature_sum, slo_micros=1_000_000,
                                    num_replicas=int(sys.argv[3]))
    print("ready", flush=True)
    sys.stdin.read()
finally:
    conn.stop_all()
"""


HITS_CACHE_SIZE = 32 * 1024 * 1024


@contextlib.contextmanager
def cluster_of(tree: Path, base_port: int, cache_size: int, replicas: int = 1):
    """A cluster run by ``tree``'s own code; yields its predict URL."""
    process = subprocess.Popen([sys.executable, "-c", CLUSTER_SCRIPT, str(base_port), str(cache_size), str(replicas)], cwd=str(tree),
                               env={**os.environ, "PYTHONPATH": str(tree)}, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the cluster of {tree} did not start")
        yield f"http://127.0.0.1:{base_port + 1}/sum/predict"
    finally:
        process.stdin.close()
        process.wait(60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="name=revision (a git revision, or WORKTREE)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--rounds", type=int, default=3, help="turns over all revisions; medians are reported")
    parser.add_argument("--hits", action="store_true", help="cache on, the same request every time")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of the model")
    parser.add_argument("--tag", help="added to the results' file name: <date>-levers-<tag>")
    args = parser.parse_args(argv)
    cache_size, body = (HITS_CACHE_SIZE, "fixed") if args.hits else (0, "unique")
    named = [item.split("=", 1) for item in args.revisions]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="levers-") as scratch, contextlib.ExitStack() as stack:
        os.environ["CLIPPER_STATE_DIR"] = str(Path(scratch) / "state")
        urls = {}
        for index, (name, revision) in enumerate(named):
            tree = export(revision, Path(scratch) / f"tree{index}")
            urls[name] = stack.enter_context(cluster_of(tree, 31000 + 10 * index, cache_size, args.replicas))
        floor = stack.enter_context(servers.floor("bare"))
        urls = {report.BARE_FLOOR: floor, **urls}
        for url in urls.values():                   # warm-up
            wrk(url, max(concurrency), max(1, args.seconds // 2), body=body)
        rounds = {}
        for _ in range(args.rounds):
            for c in concurrency:
                for name, url in urls.items():
                    rounds.setdefault(name, {}).setdefault(c, []).append(wrk(url, c, args.seconds, body=body))
                    time.sleep(0.5)
        results = {name: {c: report.median_point(points) for c, points in by_c.items()} for name, by_c in rounds.items()}
    text = markdown(results, named, concurrency, args.seconds, args.rounds,
                    ("cache on, every request the same (hits)" if args.hits else "cache off")
                    + (f", {args.replicas} replicas" if args.replicas != 1 else ""))
    print(text)
    stem = HERE / "results" / f"{datetime.date.today().isoformat()}-levers{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"revisions": dict(named), "results": results}, indent=1))


def markdown(results, named, concurrency, seconds, rounds, cache: str) -> str:
    floor = results[report.BARE_FLOOR]
    # The targets' ratios, for the client counts measured: p50 at 1 client, req/s at 64.
    ratios = [(c, title) for c, title in ((1, "p50 / floor at 1"), (64, "req/s / floor at 64")) if c in concurrency]
    lines = [f"# Levers, {datetime.date.today().isoformat()}", "",
             f"{report.machine()}; wrk on the same cores, loopback; {seconds} s per point, {rounds} rounds "
             f"in turns over the revisions, medians; {cache}, 200 doubles per request.", "",
             "| revision | " + " | ".join(f"{c} client{'s' if c > 1 else ''}: req/s (p50 ms)" for c in concurrency)
             + "".join(f" | {title}" for _, title in ratios) + " |",
             "|---|" + "---:|" * (len(concurrency) + len(ratios))]
    for name in results:
        revision = dict(named).get(name, "")
        cells = [f"{results[name][c]['rps']:,.0f} ({results[name][c]['p50_us'] / 1000:.3f})"
                 + (f", {results[name][c]['failed']} failed" if results[name][c]["failed"] else "")
                 for c in concurrency]
        cells += [f"{results[name][1]['p50_us'] / floor[1]['p50_us']:.2f}" if c == 1
                  else f"{results[name][64]['rps'] / floor[64]['rps']:.2f}" for c, _ in ratios]
        label = f"{name} (`{revision}`)" if revision else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
