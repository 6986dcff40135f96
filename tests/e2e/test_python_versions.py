"""basicQuerySimplified.py on the oldest and newest Pythons we support, each in its own venv.

The venvs are cached by interpreter and requirements, so only the first run installs.
Versions come from pyenv; a version that is not installed is skipped, saying so.
"""
import pytest

from scripts import RESPONSE_LINE, assert_nothing_left, pyenv_python, run_script, venv_with_requirements


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
