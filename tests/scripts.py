"""Running the example scripts as a user does: subprocesses in the project's root."""
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


# ---- other Pythons (from pyenv), each in a venv cached by interpreter and requirements ----
CACHE = Path.home() / ".cache" / "clipper-tests"


def pyenv_python(minor):
    """The newest pyenv interpreter of ``minor`` (e.g. "3.9"), or None."""
    if not shutil.which("pyenv"):
        return None
    listed = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout.split()
    matching = sorted((v for v in listed if v.startswith(minor + ".")),
                      key=lambda v: [int(part) for part in v.split(".") if part.isdigit()])
    if not matching:
        return None
    prefix = subprocess.run(["pyenv", "prefix", matching[-1]], capture_output=True, text=True).stdout.strip()
    return Path(prefix) / "bin" / "python"


def venv_with_requirements(python):
    requirements = (ROOT / "requirements.txt").read_bytes()
    key = hashlib.sha256(str(python).encode() + requirements).hexdigest()[:12]
    venv = CACHE / f"venv-{Path(python).parent.parent.name}-{key}"
    if not (venv / "ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
        install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                                  str(ROOT / "requirements.txt")], capture_output=True, text=True)
        if install.returncode != 0:
            pytest.skip(f"could not install requirements.txt for {python}: {install.stderr[-500:]}")
        (venv / "ready").touch()
    return venv / "bin" / "python"
