"""The quick start on every Python we support, each in its own venv, as a new user has it.

Each venv gets requirements.txt as the README says, and the example then runs with nothing
else: only the venv's bin/ on PATH, so the Redis server must come from a wheel of
requirements.txt, not from the test runner's machine. The venvs are cached by interpreter
and requirements, so only the first run installs. Versions come from pyenv; one that is not
installed is skipped, saying so.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT
from scripts import (RESPONSE_LINE, assert_nothing_left, clean_environment, pyenv_python, run_script,
                     skip_if_offline, venv_with_requirements)

FIND_SERVER = "from clipper.cluster.redis_binary import find_redis_server; print(find_redis_server())"


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_quick_start_runs_on_supported_python(minor, clipper_state_dir):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"Python {minor} is not installed (pyenv versions)")
    venv_python = venv_with_requirements(python)
    env = clean_environment(venv_python.parent)
    venv = venv_python.parent.parent
    server = subprocess.run([str(venv_python), "-c", FIND_SERVER], cwd=ROOT, env=env,
                            capture_output=True, text=True).stdout.strip()
    assert server.startswith(str(venv) + "/"), f"the Redis server should come from the venv, not {server}"
    result = run_script("basicQuerySimplified.py", python=venv_python, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(bool(RESPONSE_LINE.match(line)) for line in result.stdout.splitlines()) == 1, result.stdout
    assert_nothing_left(clipper_state_dir)


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_frontend_stops_reading_a_replica_that_takes_no_answers_on_plain_asyncio(minor, tmp_path):
    """Without uvloop, CPython 3.12.0-3.12.8 and 3.13.0-3.13.1 never paused a protocol that
    sent with writelines(): a replica flooding heartbeats grew the frontend's buffer of unsent
    answers without bound (17 MB in a second here). Run by each Python in its quick-start venv."""
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"Python {minor} is not installed (pyenv versions)")
    venv_python = venv_with_requirements(python)
    result = subprocess.run([str(venv_python), str(Path(__file__).with_name("stream_backpressure.py")),
                             str(tmp_path), "27718"], env=clean_environment(venv_python.parent),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def quick_start_commands():
    """The shell block under the README's "Quick start" heading, as a user copies it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_quick_start_on_debian_system_python(tmp_path, clipper_state_dir):
    """Debian and Ubuntu refuse pip installs into their own Python (PEP 668): the quick start
    must work there exactly as written, from a fresh copy of the repository."""
    if not Path("/usr/bin/python3").exists() or not list(Path("/usr/lib").glob("python3*/EXTERNALLY-MANAGED")):
        pytest.skip("no externally managed system Python here (/usr/bin/python3)")
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc",
                                                                ".pytest_cache", ".hypothesis"))
    result = subprocess.run(["bash", "-e", "-c", quick_start_commands()], cwd=clone,
                            env=clean_environment("/usr/bin", "/bin"), capture_output=True, text=True,
                            timeout=600)
    skip_if_offline(result, "run the quick start's pip install")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert sum(bool(RESPONSE_LINE.match(line)) for line in result.stdout.splitlines()) == 1, result.stdout
    assert_nothing_left(clipper_state_dir)
