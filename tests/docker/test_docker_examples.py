"""The three example scripts on the Docker backend, as a user runs them."""
import contextlib
import os
import signal
import subprocess
import sys

import docker.errors
import pytest

from clipper_admin.container_manager import CLIPPER_DOCKER_LABEL
from clipper_admin.docker.images import CLIENT_PYTHON, DEBIAN_RELEASE_OF_PYTHON
from helpers import built_local_base
from scripts import (RESPONSE_LINE, pyenv_python, run_script, start_script, venv_with_requirements,
                     wait_for_predictions)

# The first test may build the base image (debootstrap) and the runtime image: minutes.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def docker_client_venv(python):
    return venv_with_requirements(python, files=("requirements.txt", "requirements-docker.txt"))


@pytest.fixture
def engine_with_base(engine, base_image):
    os.environ["CLIPPER_DOCKER_BASE_IMAGE"] = base_image
    yield engine
    os.environ.pop("CLIPPER_DOCKER_BASE_IMAGE")


@pytest.fixture
def engine(docker_client):
    """The engine, checked for leftovers after the test."""
    yield docker_client
    left = docker_client.containers.list(all=True, filters={"label": CLIPPER_DOCKER_LABEL})
    for container in left:          # so that one failure does not fail every later test
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove("default-cluster-sum-model:1", force=True)


def test_simplified_example_on_docker(engine_with_base):
    result = run_script("basicQuerySimplified.py", "--backend", "docker", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "Docker backend" in lines[0]
    assert sum(bool(RESPONSE_LINE.match(line)) for line in lines) == 1, result.stdout


def test_basic_query_on_docker_stops_on_ctrl_c(engine_with_base):
    process = start_script("basicQuery.py", "--backend", "docker")
    try:
        wait_for_predictions(process, 3, timeout=600)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"still running 120 s after Ctrl-C:\n{stdout[-2000:]}\n{stderr[-6000:]}")
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in stderr, stderr


def test_close_clipper_stops_a_docker_cluster_left_by_a_killed_script(engine_with_base):
    process = start_script("basicQuery.py", "--backend", "docker")
    try:
        wait_for_predictions(process, 1, timeout=600)
    finally:
        process.kill()
        process.communicate()
    assert engine_with_base.containers.list(filters={"label": CLIPPER_DOCKER_LABEL})
    first = run_script("closeClipper.py")
    assert first.returncode == 0, first.stderr
    assert "Stopped Clipper Docker cluster 'default-cluster' (4 containers)" in first.stdout
    assert run_script("closeClipper.py").stdout.strip() == "No Clipper cluster is running."


def test_a_base_without_the_clients_python_is_refused_before_building(engine_with_base, base_image):
    other = "3.9" if CLIENT_PYTHON == "3.13" else "3.13"
    python = pyenv_python(other)
    if python is None:
        pytest.skip(f"Python {other} is not installed (pyenv versions)")
    result = run_script("basicQuerySimplified.py", "--backend", "docker", python=docker_client_venv(python))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"Error: The base image {base_image} has Python {CLIENT_PYTHON}, but this client runs Python {other}: "
        "models are cloudpickled"), result.stderr


@pytest.mark.parametrize("python", sorted(DEBIAN_RELEASE_OF_PYTHON))
def test_offline_a_client_on_each_debian_python_uses_its_local_base_without_a_pull(engine, python):
    """No Docker Hub here: the client's Python gets its Debian base, and no run waits on a pull."""
    client = sys.executable if python == CLIENT_PYTHON else pyenv_python(python)
    if client is None:
        pytest.skip(f"Python {python} is not installed (pyenv versions)")
    built_local_base(python)
    environment = {key: value for key, value in os.environ.items() if key != "CLIPPER_DOCKER_BASE_IMAGE"}
    result = run_script("basicQuerySimplified.py", "--backend", "docker", timeout=600, env=environment,
                        python=client if python == CLIENT_PYTHON else docker_client_venv(client))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(bool(RESPONSE_LINE.match(line)) for line in result.stdout.splitlines()) == 1, result.stdout
    assert "Pulling base image" not in result.stderr


def test_offline_a_client_on_a_python_debian_lacks_is_told_exactly_what_to_do(engine):
    python = next((v for v in ("3.12", "3.10", "3.9") if v not in DEBIAN_RELEASE_OF_PYTHON and pyenv_python(v)), None)
    if python is None:
        pytest.skip("no Python without a Debian release is installed (pyenv versions)")
    environment = {key: value for key, value in os.environ.items() if key != "CLIPPER_DOCKER_BASE_IMAGE"}
    result = run_script("basicQuerySimplified.py", "--backend", "docker", timeout=600, env=environment,
                        python=docker_client_venv(pyenv_python(python)))
    if result.returncode == 0:
        pytest.skip(f"python:{python}-slim could be had here (Docker Hub answers, or it was loaded)")
    assert "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: The base image python:{python}-slim is not here and cannot be pulled"), error
    assert (f"No Debian release has Python {python} (they have 3.11 (bookworm) and 3.13 (trixie)), so it cannot "
            f"be built here. Either load it from a machine with Docker Hub access (there: docker pull "
            f"python:{python}-slim && docker save python:{python}-slim -o base.tar; here: docker load -i "
            f"base.tar), or give an image with Python {python} as DockerContainerManager(base_image=...) or "
            "CLIPPER_DOCKER_BASE_IMAGE, or run this client on Python 3.11 or 3.13 after: "
            "sh docker/build-local-base.sh <that version>") in error
