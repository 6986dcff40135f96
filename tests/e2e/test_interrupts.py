"""basicQuery.py stopped by a signal at any moment: no traceback, exit 0, nothing left.

Ctrl-C is how the script is meant to end; `kill` and `timeout` send SIGTERM and a closed
terminal sends SIGHUP, which must stop the cluster in the same way. A Ctrl-C may also come
while the script imports, starts the cluster or deploys, and a second one while it stops.
"""
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from scripts import assert_nothing_left, start_script, wait_for_line, wait_for_predictions


def finish(process, timeout=60):
    try:
        return process.communicate(timeout=timeout)
    finally:
        process.kill()


def assert_stopped_cleanly(process, stdout, stderr, state_dir):
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "stopping Clipper" in stdout
    assert_nothing_left(state_dir)
    assert not (state_dir / "default-cluster").exists(), "the cluster's state directory was left"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_predicting_stops_the_cluster(signum, clipper_state_dir):
    process = start_script("basicQuery.py")
    wait_for_predictions(process, 2)
    process.send_signal(signum)
    stdout, stderr = finish(process)
    assert_stopped_cleanly(process, stdout, stderr, clipper_state_dir)


def handles_sigterm(pid):
    """Whether the process has a handler for SIGTERM (Python alone has none)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_under_nohup_a_closed_terminal_does_not_stop_it(clipper_state_dir):
    """nohup starts the script ignoring SIGHUP, to outlive its terminal: that stays so. As a
    shell script's background job it also starts ignoring SIGINT, which still stops it."""
    process = start_script("basicQuery.py", ignored=(signal.SIGHUP, signal.SIGINT))
    wait_for_predictions(process, 2)
    process.send_signal(signal.SIGHUP)
    wait_for_predictions(process, 3)          # still predicting
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process)
    assert_stopped_cleanly(process, stdout, stderr, clipper_state_dir)
    assert "SIGHUP" not in stdout + stderr


def test_ctrl_c_while_importing(clipper_state_dir):
    process = start_script("basicQuery.py")
    deadline = time.monotonic() + 30
    while not handles_sigterm(process.pid):     # its first line has run: now it imports the rest
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process)
    assert_stopped_cleanly(process, stdout, stderr, clipper_state_dir)


@pytest.mark.parametrize("moment, stream, line", [
    ("starting", "stdout", "Using the local backend"),
    ("deploying", "stderr", "Successfully registered model sum-model:1"),
])
def test_ctrl_c_while_starting_or_deploying(moment, stream, line, clipper_state_dir):
    process = start_script("basicQuery.py")
    wait_for_line(getattr(process, stream), line)
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process)
    assert_stopped_cleanly(process, stdout, stderr, clipper_state_dir)


def test_more_ctrl_c_while_stopping_do_not_cut_the_stop_short(clipper_state_dir):
    process = start_script("basicQuery.py")
    wait_for_predictions(process, 1)
    process.send_signal(signal.SIGINT)
    wait_for_line(process.stdout, "stopping Clipper")
    for _ in range(3):
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = finish(process)
    assert_stopped_cleanly(process, "stopping Clipper" + stdout, stderr, clipper_state_dir)


def test_ctrl_c_stops_everything_even_without_the_state_directory(clipper_state_dir):
    process = start_script("basicQuery.py")
    wait_for_predictions(process, 1)
    shutil.rmtree(clipper_state_dir / "default-cluster")
    process.send_signal(signal.SIGINT)
    stdout, stderr = finish(process)
    assert_stopped_cleanly(process, stdout, stderr, clipper_state_dir)
    assert "Stopped Clipper cluster 'default-cluster' (6 processes)" in stderr


DROPPED_SIGNAL_SCRIPT = """
import os, signal, sys, time, weakref
from clipper_admin.interrupts import exit_cleanly_on_signals
exit_cleanly_on_signals()

class Thing:
    pass

def callback(_ref):
    # As when Ctrl-C lands in a weakref callback of the import machinery: Python prints
    # and drops whatever such a callback raises.
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(1000))

thing = Thing()
ref = weakref.ref(thing, callback)
try:
    del thing
    time.sleep(5)
    print("ran on after Ctrl-C")
finally:
    print("stopped")
"""


def test_a_ctrl_c_that_python_drops_in_a_callback_still_stops_the_script():
    """Seen in CI: a Ctrl-C during the imports was printed as 'Exception ignored' and the
    script went on to start a cluster and predict until killed."""
    done = subprocess.run([sys.executable, "-c", DROPPED_SIGNAL_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Ctrl-C: stopping Clipper\nstopped\n"
    assert "Exception ignored" not in done.stderr
