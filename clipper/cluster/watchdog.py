"""Replaces a local cluster's supervisor that was killed (kill -9, the OOM killer), or that
stays stopped (SIGSTOP) for FROZEN_SECONDS: it kills that one first.

The supervisor runs this as one of its children, and restarts it if it dies. When the
supervisor is gone without having stopped the cluster (when it stops the cluster, it stops
this watchdog first; ``stop_all`` also marks the cluster as stopping, and a mark whose
stopper was killed before it stopped anything is ignored and removed), the watchdog becomes
the new supervisor in place: that one adopts the processes that still run, restarts the
others, and starts a new watchdog.

    python -m clipper.cluster.watchdog <cluster dir> <supervisor pid> <supervisor start time>
"""
import os
import sys
import time
from pathlib import Path

from clipper.cluster.cluster_dir import FROZEN_SECONDS, ClusterDir, FreezeWatch, ProcessRecord

POLL_SECONDS = 0.2


def main(argv) -> None:
    cluster_dir, pid, create_time = argv
    cluster = ClusterDir(Path(cluster_dir))
    supervisor = ProcessRecord(int(pid), float(create_time))
    freeze = FreezeWatch()
    while supervisor.alive():
        stopped = freeze.seconds(supervisor.pid, time.monotonic())
        if stopped >= FROZEN_SECONDS:
            print(f"the supervisor (pid {pid}) has been stopped for {stopped:.0f} s; killing it", flush=True)
            process = supervisor.process()
            if process is not None:
                process.kill()
        time.sleep(POLL_SECONDS)
    if not cluster.exists() or cluster.stop_under_way():
        return                    # stopped on purpose, or its state is gone: nothing to keep
    cluster.forget_stop()         # a stale mark, if any: the cluster runs on
    print(f"the supervisor (pid {pid}) is gone; taking its place", flush=True)
    # The new supervisor logs where the first one did.
    log = os.open(cluster.logs / "supervisor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execv(sys.executable, [sys.executable, "-m", "clipper", "supervisor", f"--cluster-dir={cluster_dir}"])


if __name__ == "__main__":
    main(sys.argv[1:])
