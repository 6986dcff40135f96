"""Running the example scripts as a user does: subprocesses in the project's root."""
import re
import signal
import subprocess
import sys
import time

from conftest import DEFAULT_PORTS, ROOT, port_open, processes_under

RESPONSE_LINE = re.compile(r"""^'\{"query_id":\d+,"output":-?[0-9.e+-]+,"default":false\}', [0-9.]+ ms$""")


def run_script(name, *args, timeout=120, python=sys.executable, env=None):
    return subprocess.run([str(python), name, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_script(name, *args):
    # A shell that starts the tests in the background makes them ignore SIGINT, and Python
    # then installs no Ctrl-C handler: give the script the terminal's default back.
    return subprocess.Popen([sys.executable, name, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_predictions(process, count, timeout=120):
    lines, deadline = [], time.monotonic() + timeout
    while len([l for l in lines if RESPONSE_LINE.match(l)]) < count:
        assert time.monotonic() < deadline, f"no predictions in time; got {lines}"
        line = process.stdout.readline()
        assert line, f"script ended early: {process.stderr.read()}"
        lines.append(line.rstrip("\n"))
    return lines


def assert_nothing_left(state_dir):
    deadline = time.monotonic() + 10
    while processes_under(state_dir) or any(port_open(p) for p in DEFAULT_PORTS):
        assert time.monotonic() < deadline, "cluster processes or ports were left behind"
        time.sleep(0.1)
