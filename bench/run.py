"""The serving benchmark: our cluster against a floor and a peer, in one run, as ratios.

    sh bench/setup-peer.sh          # once: bench dependencies, and Ray Serve in its own venv
    python bench/run.py             # about 8 minutes; --quick: 2 s per point, about 2 minutes
    python bench/run.py --no-peer --concurrency 1,16,64,256 --query-workers 1,8 --wrk-cpus 12-15 \
        --seconds 4 --tag 16core --out DIR      # a 16-core machine: wrk on 4 cores of its own
    python bench/run.py --report DIR/<date>-16core.json     # the Markdown again, from the JSON

Load comes from wrk (Debian's package) on loopback; every server listens on 127.0.0.1.
Every scenario is measured in the same run on the same machine:
- floors: an HTTP server that parses the same JSON and sums it, bare (uvloop + httptools) and
  on aiohttp (the management API's HTTP stack), the latter on uvloop and on asyncio;
- the peer: Ray Serve with the same function, default and throughput-optimized (skipped,
  saying so, when its venv is missing);
- our cluster with the sum-model (a Python closure, 200 doubles): cache off, cache on
  (repeated input: hits; new inputs: misses);
- batching: a model that costs 2 ms per call plus 20 us per item, adaptive vs batch size 1;
- micro-measures: uvloop against asyncio (the aiohttp floor on both), and the round trip to
  a second process (bench/roundtrip.py).
The throughput target's two points (the bare floor and ours at 64 clients) are measured
again in turns, both servers up, --paired-rounds times (default 3), and their medians kept.
Prints the figures and the project's targets as ratios (PASS/MISS); writes them to
bench/results/<date>.md and .json with a PNG of latency against concurrency.
--profile adds py-spy profiles of the query frontend under load (bench/results/).
--query-workers 1,8 measures our cluster (cache off) once per count of query frontend
processes sharing the port (SO_REUSEPORT); the targets use the first.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pyspy  # noqa: E402
import roundtrip  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402
from load import reserve_cores, wrk  # noqa: E402
from clipper_admin.deployers import python as python_deployer  # noqa: E402

CONCURRENCY = (1, 16, 64)
SLO_MICROS = 1_000_000     # generous: a default output is not a prediction, none should occur
PAIRED_CLIENTS = 64        # the throughput target's client count


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def costly_per_call(xs):
    # Sleeping, not spinning: the cost stands for a GPU or a remote service, which wait
    # without taking the CPU the frontend needs; on 2 shared cores a busy loop would measure
    # CPU contention instead of batching.
    time.sleep(0.002 + 20e-6 * len(xs))
    return [str(sum(x)) for x in xs]


# ---- measuring ----
def series(url, seconds, body="unique", concurrency=CONCURRENCY, defaults=None):
    """One point per concurrency after a warm-up."""
    wrk(url, max(concurrency), max(1, seconds // 2), body)
    return {c: served(url, c, seconds, body, defaults) for c in concurrency}


def served(url, clients, seconds, body="unique", defaults=None):
    """One wrk point. ``defaults()``, when given, counts the default outputs answered so
    far: they are not predictions, so they do not count as served."""
    before = defaults() if defaults else 0
    point = wrk(url, clients, seconds, body)
    point["defaults"] = (defaults() - before) if defaults else 0
    point["rps"] -= point["defaults"] / (point["duration_us"] / 1e6)
    return point


def measure_paired(results, seconds, rounds, query_workers=1):
    """The 64-client throughput target again: the bare floor and our cluster both up, loaded
    in turns, ``rounds`` times; the medians replace both series' 64-client points. Measured
    minutes apart, a single point of each moved the ratio by a tenth with the machine's
    other load (the floor alone ranged 45,655 to 65,723 req/s in one run)."""
    with servers.floor("bare", "uvloop") as floor_url, \
            servers.cluster(cache_size=0, query_workers=query_workers) as conn:
        url, defaults = deploy(conn, "sum", feature_sum)
        turns = ((report.BARE_FLOOR, floor_url, None), (report.OURS, url, defaults))
        for _, target, _ in turns:
            wrk(target, PAIRED_CLIENTS, max(1, seconds // 2))          # warm-up
        points = {name: [] for name, _, _ in turns}
        for _ in range(rounds):
            for name, target, count_defaults in turns:
                points[name].append(served(target, PAIRED_CLIENTS, seconds, defaults=count_defaults))
    for name, measured in points.items():
        results[name][PAIRED_CLIENTS] = report.median_point(measured)


def default_outputs(app):
    """Default outputs the query frontend has answered for ``app``, from its /metrics."""
    port = servers.CLUSTER_PORTS["clipper_query_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        document = json.load(response)

    def value(category, name, field):
        return next(float(entry[name][field]) for entry in document.get(category, []) if name in entry)
    try:
        count = value("counters", f"app:{app}:num_predictions", "count")
        ratio = value("ratio_counters", f"app:{app}:default_prediction_ratio", "ratio")
    except StopIteration:
        return 0
    return 0 if ratio != ratio else round(count * ratio)   # nan before the first prediction


def deploy(conn, app, func, batch_size=-1):
    python_deployer.create_endpoint(conn, app, "doubles", func, slo_micros=SLO_MICROS, batch_size=batch_size)
    return servers.app_url(app), lambda: default_outputs(app)


def measure_floors(results, seconds, concurrency=CONCURRENCY):
    for name, kind, loop in ((report.BARE_FLOOR, "bare", "uvloop"), (report.AIOHTTP_FLOOR, "aiohttp", "uvloop"),
                             (report.AIOHTTP_ASYNCIO, "aiohttp", "asyncio")):
        with servers.floor(kind, loop) as url:
            results[name] = series(url, seconds, concurrency=concurrency)


def workers_label(workers) -> str:
    return f"{report.OURS}, {workers} query workers"


def measure_ours(results, seconds, profile_stem, concurrency=CONCURRENCY, query_workers=(1,)):
    """Our cluster; with several ``query_workers`` counts, the first is "ours" (the targets')
    and each other one is measured again, cache off."""
    profiles = []
    for workers in query_workers[1:]:
        with servers.cluster(cache_size=0, query_workers=workers) as conn:
            url, defaults = deploy(conn, "sum", feature_sum)
            results[workers_label(workers)] = series(url, seconds, concurrency=concurrency, defaults=defaults)
    with servers.cluster(cache_size=0, query_workers=query_workers[0]) as conn:
        url, defaults = deploy(conn, "sum", feature_sum)
        results[report.OURS] = series(url, seconds, concurrency=concurrency, defaults=defaults)
        if profile_stem:
            for c in (1, 64):
                out = Path(f"{profile_stem}-query-frontend-c{c}.txt")
                measured = pyspy.record(servers.query_frontend_pid(conn), url, c, seconds, out)
                profiles += pyspy.describe(f"{c} client{'s' if c > 1 else ''}, cache off", out, measured)
        for name, batch_size in ((report.ADAPTIVE, -1), (report.ONE_BY_ONE, 1)):
            url, defaults = deploy(conn, "adaptive" if batch_size < 0 else "one-by-one", costly_per_call, batch_size)
            results[name] = series(url, seconds, concurrency=(64,), defaults=defaults)
    with servers.cluster(cache_size=32 * 2 ** 20, query_workers=query_workers[0]) as conn:
        url, defaults = deploy(conn, "sum", feature_sum)
        results[report.HITS] = series(url, seconds, body="fixed", concurrency=concurrency, defaults=defaults)
        results[report.MISSES] = series(url, seconds, body="unique", concurrency=concurrency, defaults=defaults)
    return profiles


def measure_peer(results, seconds):
    """Ray Serve, if its venv is there; returns what the report says about it."""
    if not servers.ray_available():
        return f"Ray Serve not measured: no `ray[serve]` in {servers.RAY_VENV} (run bench/setup-peer.sh)."
    notes = []
    for name, optimized in ((report.RAY_DEFAULT, False), (report.RAY_FAST, True)):
        try:
            with servers.ray_peer(optimized) as url:
                results[name] = series(url, seconds)
        except Exception as error:      # the peer failing must not lose our figures
            notes.append(f"{name} failed: {error}.")
    return " ".join([f"Peer: Ray Serve {servers.ray_version()} in its own venv."] + notes)


def counts(text: str) -> tuple:
    return tuple(int(part) for part in text.split(","))


def rewrite_report(path: Path) -> None:
    """The Markdown of a run's JSON (from another machine, say), written beside it."""
    document = json.loads(path.read_text())
    results = {name: {int(c): point for c, point in points.items()} if points else points
               for name, points in document["results"].items()}
    checks = [(t["target"], t["ratio"], t["op"], t["bound"]) for t in document["targets"]]
    text = report.markdown(results, checks, document)
    path.with_suffix(".md").write_text(text)
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per point instead of 10 (a smoke run)")
    parser.add_argument("--seconds", type=int, help="seconds per point")
    parser.add_argument("--no-peer", action="store_true", help="skip Ray Serve")
    parser.add_argument("--profile", action="store_true", help="also profile the query frontend with py-spy")
    parser.add_argument("--concurrency", type=counts, default=CONCURRENCY,
                        help="clients per point, e.g. 1,16,64,256 (default 1,16,64; 1 and 64 are the targets')")
    parser.add_argument("--paired-rounds", type=int, default=3,
                        help="turns of the bare floor and ours at 64 clients, medians (0: the series' points)")
    parser.add_argument("--query-workers", type=counts, default=(1,),
                        help="query frontend processes, e.g. 1,8 (default 1)")
    parser.add_argument("--wrk-cpus", help="cores for wrk alone, e.g. 12-15 (the servers get the rest)")
    parser.add_argument("--tag", help="added to the results' file name: <date>-<tag>")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the results go")
    parser.add_argument("--report", type=Path, help="only write the Markdown of this JSON file beside it")
    args = parser.parse_args(argv)
    if args.report:
        return rewrite_report(args.report)
    if args.wrk_cpus:
        reserve_cores(args.wrk_cpus)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    if args.profile and not pyspy.available():
        raise SystemExit("--profile needs py-spy: pip install -r bench/requirements.txt")
    seconds = args.seconds or (2 if args.quick else 10)
    date = datetime.date.today().isoformat()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{date}{'-' + args.tag if args.tag else ''}{'-quick' if args.quick else ''}"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as state_dir:
        os.environ["CLIPPER_STATE_DIR"] = state_dir      # the cluster's state stays out of ~/.clipper
        hop = roundtrip.measure(1000 if args.quick else 5000)
        measure_floors(results, seconds, args.concurrency)
        profiles = measure_ours(results, seconds, stem if args.profile else None, args.concurrency, args.query_workers)
        if args.paired_rounds and PAIRED_CLIENTS in args.concurrency:
            measure_paired(results, seconds, args.paired_rounds, args.query_workers[0])
            notes_paired = [f"64 clients, the bare floor and ours: medians of {args.paired_rounds} rounds in "
                            "turns, both servers up (the other rows: one point each)."]
        else:
            notes_paired = []
        peer = "Peer: skipped (--no-peer)." if args.no_peer else measure_peer(results, seconds)
    checks = report.targets(results)
    notes = [roundtrip.describe(hop), *report.hop_bound(results, hop["stream_unix"]), *notes_paired]
    if args.query_workers != (1,):
        notes.append(f"Ours: {args.query_workers[0]} query frontend process(es).")
    if args.wrk_cpus:
        notes.append(f"wrk ran on cores {args.wrk_cpus} alone, the servers on the others.")
    context = {"date": date, "seconds": seconds, "peer": peer, "notes": notes, "profiles": profiles,
               "machine": report.machine()}
    text = report.markdown(results, checks, context)
    print(text)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(
        {**context, "results": results, "targets": [
            {"target": name, "ratio": ratio, "op": op, "bound": bound, "passed": report.passed(ratio, op, bound)}
            for name, ratio, op, bound in checks]}, indent=1))
    report.plot(results, stem.with_suffix(".png"))
    print(f"written: {stem}.md, .json, .png")


if __name__ == "__main__":
    main()
