"""The serving benchmark: our cluster against a floor and a peer, in one run, as ratios.

    sh bench/setup-peer.sh          # once: bench dependencies, Ray Serve in its own venv
    python bench/run.py             # about 6 minutes; --quick for a 1-minute smoke run

Load comes from wrk (Debian's package) on loopback. Every scenario is measured in the same
run on the same machine, and every target of issue 4 is checked as a ratio:
- the floor: a bare uvloop + httptools server that parses the same JSON and sums it (and,
  for reference, the same on aiohttp, our HTTP stack, on uvloop and on plain asyncio);
- the peer: Ray Serve with the same function, default and throughput-optimized (skipped,
  saying so, when its venv is missing);
- our cluster with the sum-model (200 doubles): cache off, cache on (hits and misses);
- batching: a model that costs 2 ms per call plus 20 us per item, adaptive vs batch size 1.
Writes bench/results/<date>.md and .json, and a PNG of latency against concurrency.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from clipper_admin import ClipperConnection, LocalContainerManager  # noqa: E402
from clipper_admin.deployers import python as python_deployer  # noqa: E402

CONCURRENCY = (1, 16, 64)
CLUSTER_PORTS = dict(clipper_query_port=21337, clipper_management_port=21338,
                     clipper_rpc_port=27000, clipper_metric_port=21390)
FLOOR_PORT, PEER_PORT = 21400, 21401
RAY_VENV = Path(os.environ.get("CLIPPER_BENCH_RAY_VENV", Path.home() / ".cache/clipper-bench/ray-venv"))
BATCH_SLO_MICROS = 100_000


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def costly_per_call(xs):
    # Sleeping, not spinning: the model's cost must not take the CPU the frontend needs,
    # as a GPU or a remote service would not.
    time.sleep(0.002 + 20e-6 * len(xs))
    return [str(sum(x)) for x in xs]


# ---- load ----
def wrk(url, connections, seconds, body="fixed"):
    """Closed-loop load from wrk; requests/s and latency percentiles in microseconds."""
    threads = 1 if connections == 1 else 2
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(HERE / "wrk_post.lua"), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, "BENCH_BODY": body}).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["failed"] = result["socket_errors"] + result["non_2xx"]
    result["rps"] = (result["requests"] - result["failed"]) / (result["duration_us"] / 1e6)
    return result


def series(url, seconds, body="fixed", concurrency=CONCURRENCY):
    wrk(url, max(concurrency), max(1, seconds // 3), body)        # warm up
    return {c: wrk(url, c, seconds, body) for c in concurrency}


# ---- servers under test ----
def wait_for_port(port, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with contextlib.closing(socket.socket()) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on {port} within {timeout} s")


def port_free(port):
    with contextlib.closing(socket.socket()) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@contextlib.contextmanager
def subprocess_server(command, port, env=None):
    if not port_free(port):    # else we would measure whatever listens there
        raise RuntimeError(f"port {port} is taken: stop what listens there first")
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/bench/predict"
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)


def floor(kind, loop="uvloop"):
    return subprocess_server([sys.executable, str(HERE / "floor_server.py"), kind, str(FLOOR_PORT), loop],
                             FLOOR_PORT)


@contextlib.contextmanager
def ray_peer(throughput_optimized):
    """Ray Serve by default, or as its docs say for high throughput: its optimized data path,
    HAProxy ingress, and up to 256 requests in flight per replica (not 5)."""
    command = [str(RAY_VENV / "bin" / "python"), str(HERE / "ray_peer.py"), str(PEER_PORT)]
    env = {}
    if throughput_optimized:
        command.append("256")
        env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    try:
        with subprocess_server(command, PEER_PORT, env) as url:
            wrk(url, 1, 3)       # Serve answers on its port before its replica is up
            yield url
    finally:
        subprocess.run([str(RAY_VENV / "bin" / "ray"), "stop", "--force"], capture_output=True)
        # ray stop leaves Serve's HAProxy running: stop whatever runs from the Ray venv.
        for process in psutil.process_iter(["exe"]):
            if (process.info["exe"] or "").startswith(str(RAY_VENV)):
                with contextlib.suppress(psutil.Error):
                    process.kill()


@contextlib.contextmanager
def cluster(cache_size):
    conn = ClipperConnection(LocalContainerManager(cluster_name="bench", **CLUSTER_PORTS))
    conn.start_clipper(cache_size=cache_size)
    try:
        yield conn
    finally:
        conn.stop_all()


def app_url(conn, app):
    return f"http://{conn.get_query_addr()}/{app}/predict"


# ---- the run ----
def measure(seconds, with_peer):
    results = {"floor (bare uvloop)": None, "floor (aiohttp, uvloop)": None}
    with floor("bare") as url:
        results["floor (bare uvloop)"] = series(url, seconds)
    with floor("aiohttp") as url:
        results["floor (aiohttp, uvloop)"] = series(url, seconds)
    with floor("aiohttp", loop="asyncio") as url:
        results["floor (aiohttp, asyncio)"] = series(url, seconds, concurrency=(1, 64))
    with cluster(cache_size=0) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", feature_sum, slo_micros=1_000_000)
        results["ours, cache off"] = series(app_url(conn, "sum"), seconds)
        python_deployer.create_endpoint(conn, "adaptive", "doubles", costly_per_call,
                                        slo_micros=BATCH_SLO_MICROS)
        python_deployer.create_endpoint(conn, "one-by-one", "doubles", costly_per_call,
                                        slo_micros=BATCH_SLO_MICROS, batch_size=1)
        for app in ("adaptive", "one-by-one"):
            results[f"batching model, {app}"] = series(app_url(conn, app), seconds, concurrency=(64,))
    with cluster(cache_size=32 * 2 ** 20) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", feature_sum, slo_micros=1_000_000)
        results["ours, cache hits"] = series(app_url(conn, "sum"), seconds)
        results["ours, cache misses"] = series(app_url(conn, "sum"), seconds, body="unique", concurrency=(1,))
    if with_peer:
        for name, optimized in (("Ray Serve, default", False), ("Ray Serve, throughput-optimized", True)):
            with ray_peer(optimized) as url:
                results[name] = series(url, seconds)
    return results


def clean(points):
    """A series counts only if it was measured and no request in it failed."""
    return bool(points) and not any(point["failed"] for point in points.values())


def targets(results):
    """(target, measured ratio, bound, passed) for each target of issue 4."""
    def rps(name, c):
        return results[name][c]["rps"]

    def p50(name, c):
        return results[name][c]["p50_us"]
    floor_ = "floor (bare uvloop)"
    rays = [n for n in ("Ray Serve, default", "Ray Serve, throughput-optimized") if clean(results.get(n))]
    best_ray = max(rays, key=lambda n: rps(n, 64)) if rays else None
    rows = [("c=1 p50 latency, ours / floor", p50("ours, cache off", 1) / p50(floor_, 1), "<=", 3),
            ("c=64 throughput, ours / floor", rps("ours, cache off", 64) / rps(floor_, 64), ">=", 0.40),
            ("c=64 throughput, adaptive batching / batch size 1",
             rps("batching model, adaptive", 64) / rps("batching model, one-by-one", 64), ">=", 8),
            ("c=1 p50 latency, cache hit / miss",
             p50("ours, cache hits", 1) / p50("ours, cache misses", 1), "<=", 0.5)]
    if best_ray:
        rows += [(f"c=64 throughput, ours / {best_ray}", rps("ours, cache off", 64) / rps(best_ray, 64), ">=", 2),
                 ("c=1 p50 latency, ours / best Ray Serve",
                  p50("ours, cache off", 1) / min(p50(n, 1) for n in rays), "<=", 0.5)]
    if clean(results.get("Ray Serve, default")):
        rows.append(("c=64 throughput, ours / Ray Serve default",
                     rps("ours, cache off", 64) / rps("Ray Serve, default", 64), ">=", 10))
    return [(name, ratio, op, bound, ratio <= bound if op == "<=" else ratio >= bound)
            for name, ratio, op, bound in rows]


def report(results, checks, seconds):
    lines = [f"# Benchmark, {datetime.date.today()}",
             "", f"Machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
             f"Python {platform.python_version()}; wrk on the same cores; {seconds} s per point.", "",
             "| scenario | clients | requests/s | p50 (ms) | p99 (ms) | failed |", "|---|---:|---:|---:|---:|---:|"]
    for name, points in results.items():
        for c, point in (points or {}).items():
            lines.append(f"| {name} | {c} | {point['rps']:,.0f} | {point['p50_us'] / 1000:.3f} | "
                         f"{point['p99_us'] / 1000:.3f} | {point['failed']} |")
    lines += ["", "| target | measured | bound | |", "|---|---:|---:|---|"]
    for name, ratio, op, bound, passed in checks:
        lines.append(f"| {name} | {ratio:.2f} | {op} {bound} | {'met' if passed else 'MISSED'} |")
    if "Ray Serve, default" not in results:
        lines.append("\nRay Serve was not measured: run bench/setup-peer.sh first.")
    for name, points in results.items():
        if points and not clean(points):
            lines.append(f"\n{name}: some requests failed, so no target uses it.")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name in ("floor (bare uvloop)", "floor (aiohttp, uvloop)", "ours, cache off", "ours, cache hits",
                 "Ray Serve, default", "Ray Serve, throughput-optimized"):
        points = results.get(name)
        if points and len(points) > 1:
            xs = sorted(points)
            line, = axis.plot(xs, [points[c]["p50_us"] / 1000 for c in xs], marker="o", label=f"{name} p50")
            axis.plot(xs, [points[c]["p99_us"] / 1000 for c in xs], marker="x", linestyle=":",
                      color=line.get_color(), label=f"{name} p99")
    axis.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)",
             title="Latency against concurrency (200 doubles)")
    axis.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per point instead of 10")
    parser.add_argument("--seconds", type=int, help="seconds per point")
    parser.add_argument("--no-peer", action="store_true", help="skip Ray Serve")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    seconds = args.seconds or (2 if args.quick else 10)
    with_peer = not args.no_peer and (RAY_VENV / "bin" / "ray").exists()
    with tempfile.TemporaryDirectory(prefix="bench-") as state_dir:
        os.environ["CLIPPER_STATE_DIR"] = state_dir
        results = measure(seconds, with_peer)
    checks = targets(results)
    text = report(results, checks, seconds)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stem = out / f"{datetime.date.today()}{'-quick' if args.quick else ''}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "results": results}, indent=1))
    plot(results, stem.with_suffix(".png"))
    print(f"written: {stem}.md, .json, .png")


if __name__ == "__main__":
    main()
