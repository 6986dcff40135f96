"""basicQuerySimplified.py on the oldest and newest Pythons we support, each in its own venv.

The venvs are cached by interpreter and requirements, so only the first run installs.
Versions come from pyenv; a version that is not installed is skipped, saying so.
"""
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from scripts import RESPONSE_LINE, assert_nothing_left, run_script

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
    venv = CACHE / f"venv-{python.parent.parent.name}-{key}"
    if not (venv / "ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
        install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                                  str(ROOT / "requirements.txt")], capture_output=True, text=True)
        if install.returncode != 0:
            pytest.skip(f"could not install requirements.txt for {python}: {install.stderr[-500:]}")
        (venv / "ready").touch()
    return venv / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.9", "3.13"])
def test_simplified_example_runs_on_supported_python(minor, clipper_state_dir):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"Python {minor} is not installed (pyenv versions)")
    result = run_script("basicQuerySimplified.py", python=venv_with_requirements(python))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(bool(RESPONSE_LINE.match(line)) for line in result.stdout.splitlines()) == 1, result.stdout
    assert_nothing_left(clipper_state_dir)
