"""Where the CPU goes per request, thread by thread: the floor's one process against our
query frontend and model replica (and their ZeroMQ I/O threads, where the replica uses ZeroMQ).

    python bench/wakeups.py [--seconds 4]

For each thread: CPU microseconds and times it was scheduled in, per answered request
(the kernel's schedstat), at 1 and 64 clients. At 1 client every request wakes each thread
on its path from sleep; on a virtual machine a wake-up costs CPU of its own, which
bench/inprocess.py (the same Python fed in process, no sockets) does not see.

At 64 clients the two cores are the limit: the report adds wrk's CPU per request and the
model's own (the sum-model timed alone on a batch as the replica receives it) and gives the
best throughput ratio to the floor those figures allow. Writes bench/results/<date>-wakeups.md.
"""
import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import servers  # noqa: E402
from load import wrk  # noqa: E402
from clipper_admin.deployers import python as python_deployer  # noqa: E402

CLIENTS = (1, 64)


BUDGET_CLIENTS = 64
MODEL_ROWS = 64           # the sum-model's cost is per row, whatever the batch


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def model_cpu_us(repeats: int = 400) -> dict:
    """CPU microseconds per input of the sum the floor does (Python floats) and of the
    sum-model on the 2-D float64 batch our replica hands it (numpy scalars, one per element)."""
    batch = np.random.default_rng(0).random((MODEL_ROWS, 200))
    as_lists = batch.tolist()
    timed = {}
    for name, call in (("floor sum", lambda: [str(sum(x)) for x in as_lists]),
                       ("sum-model", lambda: feature_sum(batch))):
        started = time.process_time()
        for _ in range(repeats):
            call()
        timed[name] = (time.process_time() - started) / repeats / MODEL_ROWS * 1e6
    return timed


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
    point["cpu_us"] = point["wrk_cores"] * 1e6 / point["rps"]
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


def totals(rows: dict) -> tuple:
    """(CPU us, wake-ups) per request of the server's threads, all together."""
    threads = [value for key, value in rows.items() if key != "wrk"]
    return sum(cpu for cpu, _ in threads), sum(wakeups for _, wakeups in threads)


def budget(results: dict, model: dict) -> list:
    """Where the cores go per request at BUDGET_CLIENTS clients, and the best ratio to the
    floor's throughput that allows when both keep every core busy."""
    floor = results["floor: bare uvloop + httptools"][BUDGET_CLIENTS]
    ours = results["ours, cache off"][BUDGET_CLIENTS]
    floor_cpu, ours_cpu = totals(floor)[0], totals(ours)[0]
    floor_all, ours_all = floor_cpu + floor["wrk"]["cpu_us"], ours_cpu + ours["wrk"]["cpu_us"]
    model_extra = model["sum-model"] - model["floor sum"]
    bound = floor_all / 0.40 - ours["wrk"]["cpu_us"]
    return [
        f"**CPU budget at {BUDGET_CLIENTS} clients** (microseconds of CPU per request, all cores):",
        f"- floor: {floor_cpu:.1f} server + {floor['wrk']['cpu_us']:.1f} wrk = {floor_all:.1f}; "
        f"it answered {floor['wrk']['rps']:,.0f} req/s.",
        f"- ours: {ours_cpu:.1f} in our threads + {ours['wrk']['cpu_us']:.1f} wrk = {ours_all:.1f}; "
        f"it answered {ours['wrk']['rps']:,.0f} req/s ({ours['wrk']['rps'] / floor['wrk']['rps']:.2f} of the floor). "
        f"With every core busy in both, these figures allow at most {floor_all / ours_all:.2f} of the floor.",
        f"- the model's own work, timed alone: the sum-model "
        f"(Python's sum over a numpy row, as Clipper's example writes it) {model['sum-model']:.1f} us "
        f"per input, the floor's sum over Python floats {model['floor sum']:.1f} us: "
        f"{model_extra:.1f} us of ours is the model's numpy scalars, in the replica.",
        f"- 0.40 of the floor needs ours at most {bound:.1f} us in our threads; without the model's "
        f"extra {model_extra:.1f} us, the rest of ours would have to fit in {bound - model_extra:.1f} us "
        f"where it takes {ours_cpu - model_extra:.1f}.",
    ]


def markdown(results: dict, model: dict, seconds: int) -> str:
    lines = [f"# CPU per request, thread by thread, {datetime.date.today().isoformat()}", "",
             f"{os.cpu_count()} cores, wrk on the same machine, {seconds} s per point, 200 doubles per "
             "request. CPU: microseconds of CPU per answered request; wake-ups: times the thread was "
             "scheduled in per request.", "",
             "| server | clients | p50 (ms) | process | thread | CPU us | wake-ups |",
             "|---|---:|---:|---|---|---:|---:|"]
    for server, points in results.items():
        for clients, rows in points.items():
            p50 = rows["wrk"]["p50_us"] / 1000
            for key, value in rows.items():
                if key == "wrk":
                    continue
                (process, thread), (cpu, wakeups) = key, value
                lines.append(f"| {server} | {clients} | {p50:.3f} | {process} | {thread} | {cpu:.1f} | {wakeups:.2f} |")
            total_cpu, total_wakeups = totals(rows)
            lines.append(f"| {server} | {clients} | {p50:.3f} | **all** | | **{total_cpu:.1f}** | "
                         f"**{total_wakeups:.2f}** |")
            lines.append(f"| {server} | {clients} | {p50:.3f} | load generator | wrk | "
                         f"{rows['wrk']['cpu_us']:.1f} | |")
    return "\n".join(lines + [""] + budget(results, model)) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as state_dir:
        os.environ["CLIPPER_STATE_DIR"] = state_dir
        results = measure(args.seconds)
    text = markdown(results, model_cpu_us(), args.seconds)
    print(text)
    out = HERE / "results" / f"{datetime.date.today().isoformat()}-wakeups.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
