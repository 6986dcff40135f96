"""Helpers of the Ray backend's tests (the cluster itself: ray_cluster.py)."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

RAY_TEST_MARKER_ENV = "CLIPPERTEST_RAY_CLUSTER"
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}


def marked_processes(marker):
    """Every process of the test cluster (Ray's and Clipper's), but this one."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(RAY_TEST_MARKER_ENV) == marker and process.pid != os.getpid():
                found.append(process)
    return found


def off_loopback(processes):
    """``[(pid, command, kind, local, remote)]`` of each socket beyond 127.0.0.1."""
    found = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            for connection in process.net_connections("inet"):
                if connection.laddr.ip not in LOOPBACK_ADDRESSES or \
                        (connection.raddr and connection.raddr.ip not in LOOPBACK_ADDRESSES):
                    found.append((process.pid, " ".join(process.cmdline()[:3]), connection.status,
                                  connection.laddr, connection.raddr))
    return found


ROOT = Path(__file__).resolve().parents[2]
CLIPPER_PORTS = (1337, 1338, 7000, 1390)


def run_script(name, *args, timeout=180, env=None):
    return subprocess.run([sys.executable, name, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_script(name, *args):
    # A shell that starts the tests in the background makes them ignore SIGINT: restore it.
    return subprocess.Popen([sys.executable, name, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_predictions(process, count, timeout=180):
    predictions, deadline = 0, time.monotonic() + timeout
    while predictions < count:
        assert time.monotonic() < deadline, "no predictions in time"
        line = process.stdout.readline()
        assert line, f"script ended early: {process.stderr.read()}"
        predictions += '"default":false' in line


def clipper_actors():
    from clipper_admin.ray import connect_ray
    return [entry["name"] for entry in connect_ray().util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == "clipper"]


def assert_nothing_left(marker):
    """No Clipper actor, port or process is left on the Ray cluster."""
    deadline = time.monotonic() + 20
    while True:
        left = {"actors": clipper_actors(),
                "ports": [port for port in CLIPPER_PORTS if port_open(port)],
                "processes": [p.pid for p in marked_processes(marker) if is_clipper_process(p)]}
        if not any(left.values()):
            return
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.2)


def is_clipper_process(process):
    with contextlib.suppress(psutil.Error):
        command = process.cmdline()
        return (command[1:3] == ["-m", "clipper"]) or "redis-server" in " ".join(command[:1])
    return False


def port_open(port, host="127.0.0.1"):
    with contextlib.closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0
