"""Load from wrk: one closed-loop measurement of one URL.

wrk (Debian's package, C, event-driven) posts the bodies that wrk_post.lua makes and prints
one JSON line of results from the script's done(). wrk runs as our child, so its CPU time
is our children's rusage: reported per point, to show how much of the 2 cores it took.
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


def wrk(url: str, connections: int, seconds: float, body: str = "unique") -> dict:
    """requests/s of answered (2xx) requests, p50/p99 in microseconds, failures, wrk's CPU.

    body="unique": every request carries a new input, so no cache can answer it;
    body="fixed": every request is the same (cache hits once the first is answered).
    """
    threads = 1 if connections == 1 else 2
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "--latency", "-s", str(SCRIPT), url]
    cpu_before = children_cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          env={**os.environ, "BENCH_BODY": body, "BENCH_RUN": str(next(RUNS))})
    wrk_cpu = children_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}: {done.stderr.strip()}")
    result = parse(done.stdout)
    duration = result["duration_us"] / 1e6
    result["failed"] = result["socket_errors"] + result["non_2xx"]
    result["rps"] = (result["requests"] - result["failed"]) / duration
    result["wrk_cores"] = wrk_cpu / duration      # 1.0 = one core busy all the time
    return result
