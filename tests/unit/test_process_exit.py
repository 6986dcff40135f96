"""When a killed process counts as gone: only once it has let go of its listening sockets,
so that the ports of a stopped cluster are free for the next one at once."""
import signal
import socket
import subprocess
import sys
import time

import psutil

from clipper.cluster.cluster_dir import FreezeWatch, still_running

# Listens on a free port, says which, and keeps four threads busy in C (the GIL released):
# killed, its main thread turns zombie while the other threads may still be exiting.
BUSY_LISTENER = """
import hashlib, socket, threading, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
def churn():
    while True:
        hashlib.sha256(bytes(10_000_000)).digest()
for _ in range(4):
    threading.Thread(target=churn, daemon=True).start()
print(listener.getsockname()[1], flush=True)
time.sleep(60)
"""


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_killed_process_is_gone_only_once_its_port_is_free():
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", BUSY_LISTENER], stdout=subprocess.PIPE)
        try:
            port = int(child.stdout.readline())
            process = psutil.Process(child.pid)
            assert still_running(process) and accepts(port)
            child.send_signal(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while still_running(process):       # polled closely: the moment it counts as gone
                assert time.monotonic() < deadline, "the killed process did not exit"
            assert process.status() == psutil.STATUS_ZOMBIE
            assert not accepts(port), "counted as gone while it still held its listening socket"
        finally:
            child.kill()
            child.wait()
            child.stdout.close()


def test_a_freeze_is_timed_per_process():
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        watch = FreezeWatch()
        assert watch.seconds(sleepers[0].pid, 100.0) == 0.0          # running
        for sleeper in sleepers:
            sleeper.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while psutil.Process(sleepers[0].pid).status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline
        assert watch.seconds(sleepers[0].pid, 101.0) == 0.0          # stopped from now on
        assert watch.seconds(sleepers[0].pid, 104.5) == 3.5
        assert watch.seconds(sleepers[1].pid, 105.0) == 0.0          # another process: from nought
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
