"""Where the CPU goes per request, thread by thread: the floor's one process against our
query frontend and model replica, each with its ZeroMQ I/O thread.

    python bench/wakeups.py [--seconds 4]

For each thread: CPU microseconds and times it was scheduled in, per answered request
(the kernel's schedstat), at 1 and 64 clients. At 1 client every request wakes each thread
on its path from sleep; on a virtual machine a wake-up costs CPU of its own, which
bench/inprocess.py (the same Python fed in process, no sockets) does not see. Writes
bench/results/<date>-wakeups.md.
"""
import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import servers  # noqa: E402
from load import wrk  # noqa: E402
from clipper_admin.deployers import python as python_deployer  # noqa: E402

CLIENTS = (1, 64)


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def thread_times(pid: int) -> dict:
    """{thread name: (CPU microseconds, times scheduled in)}, summed over same-named threads."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            cpu_ns, _wait_ns, slices = map(int, Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split())
        except OSError:           # the thread ended meanwhile
            continue
        cpu, count = times.get(name, (0.0, 0))
        times[name] = (cpu + cpu_ns / 1e3, count + slices)
    return times


def per_request(url: str, processes: dict, clients: int, seconds: int) -> dict:
    """{(process, thread): (CPU us, wake-ups) per request}, plus wrk's figures under "wrk"."""
    wrk(url, clients, 1)                                   # warm-up
    before = {name: thread_times(pid) for name, pid in processes.items()}
    point = wrk(url, clients, seconds)
    after = {name: thread_times(pid) for name, pid in processes.items()}
    requests = point["requests"]
    rows = {"wrk": point}
    for name in processes:
        for thread, (cpu, count) in after[name].items():
            cpu0, count0 = before[name].get(thread, (0.0, 0))
            if cpu - cpu0 > 0.01 * requests:               # threads on the request path only
                rows[(name, thread)] = ((cpu - cpu0) / requests, (count - count0) / requests)
    return rows


def measure(seconds: int) -> dict:
    results = {}
    with servers.floor("bare") as url:
        pid = next(child.pid for child in psutil.Process().children()
                   if "floor_server.py" in " ".join(child.cmdline()))
        results["floor: bare uvloop + httptools"] = {c: per_request(url, {"floor": pid}, c, seconds)
                                                     for c in CLIENTS}
    with servers.cluster(cache_size=0) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", feature_sum, slo_micros=1_000_000)
        roles = {p["role"]: p["pid"] for p in conn.cm.cluster.processes()}
        processes = {"query frontend": roles["query-frontend"], "replica": roles["model-container"]}
        results["ours, cache off"] = {c: per_request(servers.app_url("sum"), processes, c, seconds)
                                      for c in CLIENTS}
    return results


def markdown(results: dict, seconds: int) -> str:
    lines = [f"# CPU per request, thread by thread, {datetime.date.today().isoformat()}", "",
             f"{os.cpu_count()} cores, wrk on the same machine, {seconds} s per point, 200 doubles per "
             "request. CPU: microseconds of CPU per answered request; wake-ups: times the thread was "
             "scheduled in per request.", "",
             "| server | clients | p50 (ms) | process | thread | CPU us | wake-ups |",
             "|---|---:|---:|---|---|---:|---:|"]
    for server, points in results.items():
        for clients, rows in points.items():
            p50 = rows["wrk"]["p50_us"] / 1000
            total_cpu = total_wakeups = 0.0
            for key, value in rows.items():
                if key == "wrk":
                    continue
                (process, thread), (cpu, wakeups) = key, value
                total_cpu += cpu
                total_wakeups += wakeups
                lines.append(f"| {server} | {clients} | {p50:.3f} | {process} | {thread} | {cpu:.1f} | {wakeups:.2f} |")
            lines.append(f"| {server} | {clients} | {p50:.3f} | **all** | | **{total_cpu:.1f}** | "
                         f"**{total_wakeups:.2f}** |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as state_dir:
        os.environ["CLIPPER_STATE_DIR"] = state_dir
        results = measure(args.seconds)
    text = markdown(results, args.seconds)
    print(text)
    out = HERE / "results" / f"{datetime.date.today().isoformat()}-wakeups.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
