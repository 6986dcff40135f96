"""Where basicQuerySimplified.py's time goes, and what a cluster holds in memory.

    python bench/e2e.py [--runs 3] [--base REVISION ...]

1. The whole script, end to end (wall time of `python basicQuerySimplified.py`, median of
   --runs), for this checkout and, with --base, for other git revisions in the same run,
   in turns (each lever's commit, say), with each one's ratio to the first --base.
2. The same steps timed one by one in this process: interpreter start and imports (in a
   child, as the script pays them), start_clipper (with when Redis and each frontend
   process was started), register, deploy, link, first query, stop_all.
3. Resident memory (RSS, and USS: what the process alone holds) of every process of an
   idle cluster with one replica, then of each replica added by add_replicas.
Prints Markdown; writes bench/results/<date>-e2e.md.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from revisions import export  # noqa: E402
from clipper import launch as recipe  # noqa: E402
from clipper.config import REDIS, Config  # noqa: E402

PORTS = dict(clipper_query_port=22337, clipper_management_port=22338, clipper_rpc_port=27100,
             clipper_metric_port=22390)


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def whole_script(tree: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "basicQuerySimplified.py"], cwd=str(tree), check=True,
                   env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def child_seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=str(REPO), check=True)
    return time.perf_counter() - started


def steps():
    """(step, seconds) of the script's steps, timed one by one."""
    timed = [("interpreter start", child_seconds("pass"))]
    timed.append(("imports (numpy, requests, clipper_admin, deployer)", child_seconds(
        "import numpy, requests, clipper_admin; from clipper_admin.deployers import python") - timed[0][1]))
    import numpy as np
    import requests
    from clipper_admin import ClipperConnection, LocalContainerManager
    from clipper_admin.deployers import python as python_deployer

    conn = ClipperConnection(LocalContainerManager(cluster_name="e2e", **PORTS))
    answered = {}
    watcher = threading.Thread(target=watch_servers, args=(conn.cm.cluster, answered), daemon=True)
    started = time.monotonic()
    watcher.start()
    conn.start_clipper()
    ready = time.monotonic()
    watcher.join()
    previous = started
    for role, at in sorted(answered.items(), key=lambda item: item[1]):
        what = "the supervisor's start, then Redis's" if role == REDIS else "both frontends start with Redis"
        timed.append((f"start_clipper: until the {role} answers ({what})" if previous == started
                      else f"start_clipper: then until the {role} answers", at - previous))
        previous = at
    timed.append(("start_clipper: then until it returns", ready - previous))
    try:
        for label, call in (
                ("register_application", lambda: conn.register_application(
                    name="hello-world", input_type="doubles", default_output="-1.0", slo_micros=100000)),
                ("deploy_python_closure (one replica connected)", lambda: python_deployer.deploy_python_closure(
                    conn, name="sum-model", version=1, input_type="doubles", func=feature_sum)),
                ("link_model_to_app", lambda: conn.link_model_to_app(app_name="hello-world", model_name="sum-model")),
                ("first query", lambda: requests.post(f"http://{conn.get_query_addr()}/hello-world/predict",
                                                      json={"input": list(np.random.random(10))}, timeout=10))):
            began = time.perf_counter()
            call()
            timed.append((label, time.perf_counter() - began))
        memory = memory_figures(conn)
    finally:
        began = time.perf_counter()
        conn.stop_all()
        timed.append(("stop_all", time.perf_counter() - began))
    return timed, memory


def watch_servers(cluster, answered, poll_seconds=0.002, timeout=60.0):
    """Record in ``answered`` when each server of a starting cluster first answers
    (time.monotonic()), probing as the launch recipe does."""
    deadline = time.monotonic() + timeout
    while not cluster.settings() and time.monotonic() < deadline:
        time.sleep(poll_seconds)
    pending = recipe.servers(Config(**cluster.settings()["config"]), embedded_redis=True)
    while pending and time.monotonic() < deadline:
        for launch in [launch for launch in pending if launch.is_ready()]:
            answered[launch.role] = time.monotonic()
            pending.remove(launch)
        time.sleep(poll_seconds)


def memory_of(pid: int):
    info = psutil.Process(pid).memory_full_info()
    return info.rss, info.uss


def memory_figures(conn):
    """(process, RSS, USS) of the idle cluster, then of each added replica."""
    time.sleep(1)
    rows = [(p["role"] if p["role"] != "model-container" else "model replica 1", *memory_of(p["pid"]))
            for p in conn.cm.cluster.processes()]
    rows.append(("supervisor", *memory_of(conn.cm.cluster.supervisor().pid)))
    before = {p["pid"] for p in conn.cm.cluster.processes()}
    conn.set_num_replicas("sum-model", 3, version=1)
    time.sleep(1)
    for index, p in enumerate(p for p in conn.cm.cluster.processes() if p["pid"] not in before):
        rows.append((f"added model replica {index + 2}", *memory_of(p["pid"])))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", action="append", default=[],
                        help="a git revision to time the whole script of, in the same run (repeatable)")
    args = parser.parse_args(argv)
    lines = [f"# basicQuerySimplified.py, end to end, {datetime.date.today().isoformat()}", "",
             f"{report.machine()}; local backend; medians of {args.runs} runs.", ""]
    with tempfile.TemporaryDirectory(prefix="e2e-") as scratch:
        os.environ["CLIPPER_STATE_DIR"] = str(Path(scratch) / "state")
        trees = {"this checkout": REPO}
        for index, revision in enumerate(args.base):
            trees[f"`{revision}`"] = export(revision, Path(scratch) / f"base{index}")
        wholes = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                wholes[name].append(whole_script(tree))
        timed, memory = steps()
    reference = statistics.median(wholes[f"`{args.base[0]}`"]) if args.base else None
    lines += ["| whole script | seconds (median) | / first base | runs |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {statistics.median(runs):.2f} | "
              f"{f'{statistics.median(runs) / reference:.2f}' if reference else ''} | "
              f"{', '.join(f'{r:.2f}' for r in runs)} |" for name, runs in wholes.items()]
    lines += ["", "| step (this checkout, timed one by one) | seconds |", "|---|---:|"]
    lines += [f"| {label} | {seconds:.3f} |" for label, seconds in timed]
    lines += [f"| sum | {sum(s for _, s in timed):.2f} |", "",
              "| process (idle cluster, one replica; then replicas added) | RSS (MiB) | USS (MiB) |", "|---|---:|---:|"]
    lines += [f"| {name} | {rss / 2**20:.1f} | {uss / 2**20:.1f} |" for name, rss, uss in memory]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results" / f"{datetime.date.today().isoformat()}-e2e.md").write_text(text)


if __name__ == "__main__":
    main()
