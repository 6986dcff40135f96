"""What a run measured, as the project's targets (ratios, PASS/MISS), a Markdown report and a plot."""
import os
import platform
import statistics

BARE_FLOOR = "floor: bare uvloop + httptools"
AIOHTTP_FLOOR = "floor: aiohttp on uvloop"
AIOHTTP_ASYNCIO = "floor: aiohttp on asyncio"
OURS = "ours, cache off"
HITS = "ours, cache on, hits"
MISSES = "ours, cache on, misses"
ADAPTIVE = "batching model, adaptive"
ONE_BY_ONE = "batching model, batch size 1"
RAY_DEFAULT = "Ray Serve, default"
RAY_FAST = "Ray Serve, throughput-optimized"
PLOTTED = (BARE_FLOOR, AIOHTTP_FLOOR, OURS, HITS, RAY_DEFAULT, RAY_FAST)


def median_point(points):
    """One point from several rounds of the same measure: the median of each figure,
    failures summed; the rounds are kept beside it."""
    return {"rps": statistics.median(p["rps"] for p in points),
            "p50_us": statistics.median(p["p50_us"] for p in points),
            "p99_us": statistics.median(p["p99_us"] for p in points),
            "wrk_cores": statistics.median(p["wrk_cores"] for p in points),
            "failed": sum(p["failed"] for p in points), "rounds": points}


def clean(points) -> bool:
    """A series counts only if it was measured and no request in it failed."""
    return bool(points) and not any(point["failed"] for point in points.values())


def rps(results, name, c):
    return results[name][c]["rps"]


def p50(results, name, c):
    return results[name][c]["p50_us"]


def targets(results):
    """(target, measured ratio, "<=" or ">=", bound) for each target that was measured.

    The floor is the bare uvloop + httptools server; the aiohttp floor is checked against
    the same bounds, for reference.
    """
    rows = []
    for floor_name in (BARE_FLOOR, AIOHTTP_FLOOR):
        if clean(results.get(floor_name)) and clean(results.get(OURS)):
            rows += [(f"1 client p50, ours / {floor_name}", p50(results, OURS, 1) / p50(results, floor_name, 1), "<=", 3),
                     (f"64 clients req/s, ours / {floor_name}", rps(results, OURS, 64) / rps(results, floor_name, 64), ">=", 0.40)]
    rays = [name for name in (RAY_DEFAULT, RAY_FAST) if clean(results.get(name))]
    if rays and clean(results.get(OURS)):
        best = max(rays, key=lambda name: rps(results, name, 64))
        fastest = min(rays, key=lambda name: p50(results, name, 1))
        rows += [(f"64 clients req/s, ours / {best} (Ray's best)", rps(results, OURS, 64) / rps(results, best, 64), ">=", 4),
                 (f"1 client p50, ours / {fastest} (Ray's best)", p50(results, OURS, 1) / p50(results, fastest, 1), "<=", 1)]
        if RAY_DEFAULT in rays:
            rows.append((f"64 clients req/s, ours / {RAY_DEFAULT}", rps(results, OURS, 64) / rps(results, RAY_DEFAULT, 64), ">=", 10))
    if clean(results.get(ADAPTIVE)) and clean(results.get(ONE_BY_ONE)):
        rows.append(("64 clients req/s, adaptive batching / batch size 1 (2 ms + 20 us per item)",
                     rps(results, ADAPTIVE, 64) / rps(results, ONE_BY_ONE, 64), ">=", 8))
    if clean(results.get(HITS)) and clean(results.get(MISSES)):
        rows.append(("1 client p50, cache hit / miss", p50(results, HITS, 1) / p50(results, MISSES, 1), "<=", 0.5))
    if clean(results.get(HITS)) and clean(results.get(BARE_FLOOR)):
        rows.append((f"64 clients req/s, cache hits / {BARE_FLOOR}", rps(results, HITS, 64) / rps(results, BARE_FLOOR, 64), ">=", 0.8))
    return [(name, ratio, op, bound) for name, ratio, op, bound in rows]


def passed(ratio, op, bound) -> bool:
    return ratio <= bound if op == "<=" else ratio >= bound


def observations(results):
    """One line each: the load generator is not the limit, and uvloop against asyncio."""
    lines = []
    if clean(results.get(BARE_FLOOR)) and clean(results.get(OURS)):
        floor64, ours64 = results[BARE_FLOOR][64], results[OURS][64]
        lines.append(f"Load generator: wrk drove the bare floor to {floor64['rps']:,.0f} req/s at 64 clients, "
                     f"{floor64['rps'] / ours64['rps']:.1f}x what our cluster answered, so wrk does not limit our "
                     f"figures; it kept {ours64['wrk_cores']:.2f} cores busy while loading our cluster.")
    if clean(results.get(AIOHTTP_FLOOR)) and clean(results.get(AIOHTTP_ASYNCIO)):
        gains = ", ".join(f"{rps(results, AIOHTTP_FLOOR, c) / rps(results, AIOHTTP_ASYNCIO, c) - 1:+.0%} at {c} "
                          f"({rps(results, AIOHTTP_FLOOR, c):,.0f} vs {rps(results, AIOHTTP_ASYNCIO, c):,.0f} req/s)"
                          for c in sorted(results[AIOHTTP_ASYNCIO]))
        lines.append(f"uvloop: aiohttp answers {gains} clients on uvloop than on asyncio.")
    if clean(results.get(AIOHTTP_FLOOR)) and clean(results.get(BARE_FLOOR)):
        lines.append(f"aiohttp: the bare httptools floor answers {rps(results, BARE_FLOOR, 64) / rps(results, AIOHTTP_FLOOR, 64):.1f}x "
                     f"as many requests as the aiohttp floor at 64 clients.")
    return lines


def hop_bound(results, round_trip_us: float):
    """What the hops alone cost at 1 client: the floor's HTTP round trip plus one round trip
    to a second process (as the local backend's replicas connect), with no work of ours on
    either side."""
    if not clean(results.get(BARE_FLOOR)):
        return []
    floor = p50(results, BARE_FLOOR, 1)
    hops = floor + round_trip_us
    return [f"Hops alone at 1 client: the bare floor's p50 ({floor:.0f} us) plus one round trip to the "
            f"replica ({round_trip_us:.0f} us) is {hops:.0f} us, {hops / floor:.2f}x the floor before any work "
            f"of the frontend or the model's process; a 3x bound leaves {3 * floor - hops:.0f} us for all of it."]


def machine() -> str:
    """This machine; BENCH_MACHINE, when set, names it (a lent machine's host name says little)."""
    return (f"Machine: {os.environ.get('BENCH_MACHINE') or platform.node()}, {os.cpu_count()} cores, "
            f"{platform.platform()}, Python {platform.python_version()}")


def markdown(results, checks, context) -> str:
    lines = [f"# Benchmark, {context['date']}", "",
             f"{context.get('machine') or machine()}; wrk on the same cores unless a note says otherwise, loopback; {context['seconds']} s per point "
             f"after a warm-up; 200 doubles per request. {context['peer']}", "",
             "| scenario | clients | requests/s | p50 (ms) | p99 (ms) | failed | wrk (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, points in results.items():
        for c, point in (points or {}).items():
            lines.append(f"| {name} | {c} | {point['rps']:,.0f} | {point['p50_us'] / 1000:.3f} | "
                         f"{point['p99_us'] / 1000:.3f} | {point['failed']} | {point['wrk_cores']:.2f} |")
    lines += ["", "| target | measured | bound | |", "|---|---:|---:|---|"]
    for name, ratio, op, bound in checks:
        lines.append(f"| {name} | {ratio:.2f} | {op} {bound} | {'PASS' if passed(ratio, op, bound) else 'MISS'} |")
    for name in (RAY_DEFAULT, RAY_FAST):
        if name not in results:
            lines.append(f"| {name} | not measured | | {context['peer']} |")
    lines += [""] + [f"- {line}" for line in observations(results) + context.get("notes", [])]
    for name, points in results.items():
        if points and not clean(points):
            lines.append(f"- {name}: some requests failed, so no target uses it.")
    if context.get("profiles"):
        lines += ["", "## Where the query frontend spends its time (py-spy)", ""] + context["profiles"]
    return "\n".join(lines) + "\n"


def plot(results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(8, 5))
    for name in PLOTTED:
        points = results.get(name)
        if points and len(points) > 1:
            xs = sorted(points)
            line, = axis.plot(xs, [points[c]["p50_us"] / 1000 for c in xs], marker="o", label=f"{name}, p50")
            axis.plot(xs, [points[c]["p99_us"] / 1000 for c in xs], marker="x", linestyle=":",
                      color=line.get_color(), label=f"{name}, p99")
    concurrency = sorted({c for points in results.values() if points for c in points})
    axis.set(xscale="log", yscale="log", xlabel="concurrent clients (wrk connections)", ylabel="latency (ms)",
             title="Latency against concurrency (sum of 200 doubles)")
    axis.set_xticks(concurrency, [str(c) for c in concurrency])
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
