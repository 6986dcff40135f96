"""Load from wrk: one closed-loop measurement of one URL.

wrk (Debian's package, C, event-driven) posts the bodies that wrk_post.lua makes and prints
one JSON line of results from the script's done(). wrk runs as our child, so its CPU time
is our children's rusage: reported per point, to show how much of the 2 cores it took.
On a machine with cores to spare, ``reserve_cores`` gives wrk cores of its own (with a
thread on each), and the servers, started after, the rest.
"""
import itertools
import json
import os
import resource
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("wrk_post.lua")
RUNS = itertools.count()     # numbers each wrk run, so that its "unique" inputs are new
RESULT_FIELDS = {"requests", "duration_us", "socket_errors", "non_2xx", "p50_us", "p99_us"}
WRK_CPUS_ENV = "BENCH_WRK_CPUS"     # cores wrk runs on, as "12-15" or "12,13"


def parse_cpus(spec: str) -> set:
    cpus = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def reserve_cores(spec: str) -> None:
    """wrk runs on the cores of ``spec`` from now on; this process and what it starts, the others."""
    wrk_cpus = parse_cpus(spec)
    rest = os.sched_getaffinity(0) - wrk_cpus
    if not wrk_cpus or not rest:
        raise ValueError(f"--wrk-cpus {spec} leaves no cores for wrk or for the servers")
    os.environ[WRK_CPUS_ENV] = spec
    os.sched_setaffinity(0, rest)


def wrk_cpus() -> set:
    spec = os.environ.get(WRK_CPUS_ENV)
    return parse_cpus(spec) if spec else set()


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse(stdout: str) -> dict:
    """The last JSON line carrying every result field (wrk prints its own summary first)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if RESULT_FIELDS <= result.keys():
                return result
    raise ValueError(f"wrk printed no result line; its output ended with:\n{stdout[-800:]}")


def wrk(url: str, connections: int, seconds: float, body: str = "unique", body_file: Path = None,
        count_defaults: bool = False) -> dict:
    """requests/s of answered (2xx) requests, p50/p99 in microseconds, failures, wrk's CPU.

    body="unique": every request carries a new input, so no cache can answer it;
    body="fixed": every request is the same (cache hits once the first is answered);
    body_file: the bodies, one a line, sent in turn instead.
    count_defaults: "default_answers" counts the default outputs among the answers (these
    still count as answered in "rps"; the caller decides).
    """
    cpus = wrk_cpus()
    threads = 1 if connections == 1 else min(connections, max(2, len(cpus)))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "--latency", "-s", str(SCRIPT), url]
    cpu_before = children_cpu_seconds()
    env = {**os.environ, "BENCH_BODY": body, "BENCH_RUN": str(next(RUNS)),
           "BENCH_COUNT_DEFAULTS": "1" if count_defaults else "0"}
    if body_file:
        env["BENCH_BODY_FILE"] = str(body_file)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, env=env,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    wrk_cpu = children_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}: {done.stderr.strip()}")
    result = parse(done.stdout)
    duration = result["duration_us"] / 1e6
    result["failed"] = result["socket_errors"] + result["non_2xx"]
    result["rps"] = (result["requests"] - result["failed"]) / duration
    result["wrk_cores"] = wrk_cpu / duration      # 1.0 = one core busy all the time
    return result
