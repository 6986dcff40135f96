"""Running the example scripts as a user does: subprocesses in the project's root."""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import DEFAULT_PORTS, ROOT, port_open, processes_under

RESPONSE_LINE = re.compile(r"""^'\{"query_id":\d+,"output":-?[0-9.e+-]+,"default":false\}', [0-9.]+ ms$""")


def run_script(name, *args, timeout=120, python=sys.executable, env=None):
    return subprocess.run([str(python), name, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_script(name, *args, ignored=()):
    """The script as a terminal runs it. A shell that starts the tests in the background (or
    nohup) makes them ignore SIGINT (or SIGHUP), and the script keeps what it is started
    with: give it the terminal's defaults back, but for the signals in ``ignored``."""
    def as_from_a_terminal():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
    return subprocess.Popen([sys.executable, name, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)


def wait_for_predictions(process, count, timeout=120):
    lines, deadline = [], time.monotonic() + timeout
    while len([l for l in lines if RESPONSE_LINE.match(l)]) < count:
        assert time.monotonic() < deadline, f"no predictions in time; got {lines}"
        line = process.stdout.readline()
        assert line, f"script ended early: {process.stderr.read()}"
        lines.append(line.rstrip("\n"))
    return lines


def wait_for_line(stream, text, timeout=120):
    """Read ``stream`` until a line that contains ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        assert line, f"the script ended before printing {text!r}"
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} in {timeout} s")


def assert_nothing_left(state_dir):
    deadline = time.monotonic() + 10
    while processes_under(state_dir) or any(port_open(p) for p in DEFAULT_PORTS):
        assert time.monotonic() < deadline, "cluster processes or ports were left behind"
        time.sleep(0.1)


# ---- other Pythons (from pyenv), each in a venv cached by interpreter and requirements ----
CACHE = Path.home() / ".cache" / "clipper-tests"
# What pip says when it cannot reach the index (then the test cannot judge, and skips).
OFFLINE_SIGNS = ("Failed to establish a new connection", "Network is unreachable",
                 "Temporary failure in name resolution")


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


def skip_if_offline(pip_run, what):
    if pip_run.returncode and any(sign in pip_run.stderr for sign in OFFLINE_SIGNS):
        pytest.skip(f"PyPI is not reachable from here to {what}")


def clean_environment(*path):
    """What a new user sees: only the directories ``path`` on PATH (so no redis-server of the
    test runner's, and no compiler unless one is there), no PYTHONPATH, no pyenv, no venv;
    pip's settings and our own state directory kept."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYENV", "PYTHONPATH", "VIRTUAL_ENV", "CLIPPER_"))}
    env["PATH"] = os.pathsep.join(map(str, path))
    env["PIP_RETRIES"] = "1"          # enough to tell "offline" (then skip) from a failure, soon
    if "CLIPPER_STATE_DIR" in os.environ:
        env["CLIPPER_STATE_DIR"] = os.environ["CLIPPER_STATE_DIR"]
    return env


def venv_with_requirements(python, files=("requirements.txt",)):
    """A venv of ``python`` with the requirements ``files`` installed as the README says, in a
    clean environment (so nothing may need a compiler); its interpreter."""
    requirements = b"".join((ROOT / name).read_bytes() for name in files)
    key = hashlib.sha256(str(python).encode() + requirements).hexdigest()[:12]
    venv = CACHE / f"venv-{Path(python).parent.parent.name}-{key}"
    venv_python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
        install = subprocess.run([str(venv_python), "-m", "pip", "install", "-q",
                                  *(argument for name in files for argument in ("-r", str(ROOT / name)))],
                                 capture_output=True, text=True, env=clean_environment(venv_python.parent))
        skip_if_offline(install, f"install {' '.join(files)} for {python}")
        assert install.returncode == 0, f"pip install of {' '.join(files)} failed on {python}:\n" \
                                        f"{install.stderr[-1500:]}"
        (venv / "ready").touch()
    return venv_python
