"""Sample a process with py-spy while wrk loads it, and summarise where its CPU time went.

py-spy (a bench-only dependency) attaches to the running query frontend without changing it;
--nonblocking samples without pausing it, so the load runs as it would unobserved. Idle
samples (waiting in the event loop's poll) are left out, so shares are of busy time; how
busy the process was comes from its own CPU counters.
"""
import collections
import re
import shutil
import subprocess
from pathlib import Path

import psutil

from load import wrk

LINE_NUMBER = re.compile(r":\d+\)$")     # "func (file.py:123)" -> one entry per function
EVENT_LOOP_ENTRY = "Runner.run (asyncio/runners.py"
EVENT_LOOP = "event loop (uvloop, C: polling, socket reads and writes, callbacks)"


def record(pid: int, url: str, connections: int, seconds: int, out: Path) -> dict:
    """Load ``url`` while sampling ``pid``; py-spy's collapsed stacks go to ``out``.
    Returns wrk's figures plus the process's CPU use (cores, and microseconds per request)."""
    process = psutil.Process(pid)
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                            "--nonblocking", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        cpu_before = sum(process.cpu_times()[:2])
        load = wrk(url, connections, seconds)
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        _, errors = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {errors.strip()}")
    served = load["requests"] - load["failed"]
    return {**load, "cores": cpu / (load["duration_us"] / 1e6), "cpu_us_per_request": cpu * 1e6 / max(served, 1)}


def frames_of(stack: str):
    """A sampled stack, without the start-up chain down to the event loop's run: with
    --nonblocking, py-spy sees a coroutine's frames without it anyway. Empty means the
    sample was in the event loop's own C code (uvloop: polling, socket reads and writes)."""
    frames = [LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
    loop_entry = [i for i, frame in enumerate(frames) if frame.startswith(EVENT_LOOP_ENTRY)]
    return frames[loop_entry[-1] + 1:] if loop_entry else frames


def component(frame: str) -> str:
    """The package (or our module) a function belongs to, from py-spy's "func (path)"."""
    path = frame.rpartition(" (")[2].rstrip(")")
    if path.startswith("clipper/"):
        return path.rsplit(".", 1)[0]
    return path.split("/", 1)[0] if "/" in path else path


def summary(collapsed: Path, top: int):
    """Samples by function including its callees, by function itself, and by component."""
    inclusive, own, components = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        total += count
        frames = frames_of(stack) or [EVENT_LOOP]
        own[frames[-1]] += count
        components[component(frames[-1]) if frames[-1] != EVENT_LOOP else "uvloop"] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, inclusive.most_common(top), own.most_common(top), components.most_common()


def describe(title: str, collapsed: Path, measured: dict, top: int = 12) -> list:
    total, inclusive, own, components = summary(collapsed, top)
    shares = ", ".join(f"{name} {n / total:.0%}" for name, n in components if n / total >= 0.01)
    lines = [f"**{title}**: {measured['rps']:,.0f} req/s while sampled; the query frontend used "
             f"{measured['cores']:.2f} cores, {measured['cpu_us_per_request']:.0f} us of CPU per request. "
             f"Of its {total:,} busy samples (raw stacks: `{collapsed.name}`), by where the time itself "
             f"was spent: {shares}.", "",
             "| function, with what it calls | share | function itself | share |", "|---|---:|---|---:|"]
    for (frame, n), (own_frame, own_n) in zip(inclusive, own):
        lines.append(f"| `{frame}` | {n / total:.0%} | `{own_frame}` | {own_n / total:.0%} |")
    return lines + [""]


def available() -> bool:
    return shutil.which("py-spy") is not None
