"""Busy polling: after a message, look for the next one a short while before sleeping.

At low load every thread on a prediction's path sleeps between messages, and waking a
sleeping thread costs tens of microseconds (on a virtual machine a halted core's wake-up
is a VM exit: README, Benchmark). Polling for ``busy_poll_us`` after each message saves
the wake-ups of back-to-back traffic: the query frontend's (the next request, the
replica's reply) and the replica's (its next batch). It spends CPU only within that
window after traffic; an idle cluster sleeps. With a single core to run on (by affinity
or by a cgroup's CPU quota, as ``docker run --cpus 1`` sets), a process that polls would
hold the core that the process it waits for needs, or spend its quota: polling is off.
"""
import asyncio
import os
import time
from pathlib import Path
from typing import Callable, Optional

now = time.perf_counter          # busy polling's clock: deadlines here and in its callers


def window_seconds(busy_poll_us: int) -> float:
    """How long to poll after each message, in seconds: 0 when off or on a single core."""
    if busy_poll_us <= 0 or _usable_cores() < 2:
        return 0.0
    return busy_poll_us / 1e6


def _usable_cores() -> float:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:              # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cores if quota is None else min(cores, quota)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"),
                     membership: Path = Path("/proc/self/cgroup")) -> Optional[float]:
    """The tightest CPU quota on this process's cgroup and those above it (a container's, a
    systemd slice's, a pod's), in cores: cgroup v2's cpu.max, or v1's cpu.cfs_quota_us over
    cpu.cfs_period_us. None where there is none or it cannot be read."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            mount, version2 = root, True
        elif "cpu" in controllers.split(","):
            mount, version2 = root / controllers, False
        else:
            continue
        # Without a cgroup namespace a container sees its own group at the mount's root,
        # under the path the host knows it by: the root is among the groups read.
        group = Path(path.lstrip("/"))
        quotas = [quota for quota in (_quota(mount / directory, version2) for directory in (group, *group.parents))
                  if quota is not None]
        if quotas:
            return min(quotas)
    return None


def _quota(directory: Path, version2: bool) -> Optional[float]:
    try:
        if version2:                                        # "max 100000" or "50000 100000"
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or float(period) <= 0:
            return None
        return float(quota) / float(period)
    except (OSError, ValueError):
        return None


class LoopPoller:
    """Keeps the running event loop polling for ``seconds`` after the last ``poke()``: while
    a callback is ready the loop looks for I/O without waiting, so it never sleeps."""

    def __init__(self, seconds: float):
        self._seconds = seconds
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._until = 0.0
        self._polling = False

    def poke(self) -> None:
        if self._seconds:
            self._until = now() + self._seconds
            if not self._polling:
                self._loop = asyncio.get_running_loop()      # raises outside a loop, before the flag
                self._polling = True
                self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        if now() < self._until:
            os.sched_yield()
            self._loop.call_soon(self._poll)
        else:
            self._polling = False


def poll_until(poll_once: Callable[[], dict], until: float) -> dict:
    """``poll_once()`` (a poll that does not wait) again and again until it finds something
    or ``until`` (on ``now()``'s clock) passes. Between polls the core is offered to any
    other thread that wants it: a replica that polls must not keep another from running."""
    while now() < until:
        ready = poll_once()
        if ready:
            return ready
        os.sched_yield()
    return {}
