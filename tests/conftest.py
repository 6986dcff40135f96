"""Shared fixtures: an isolated state directory, real local clusters, and a leak check.

Every test session gets its own CLIPPER_STATE_DIR, so it never touches a user's clusters,
and fails if any process it started (found by the CLIPPER_CLUSTER_DIR marker) or any
Clipper port is still there at the end. Docker tests skip, saying why, without an engine or
a base image, and fail the session if a Clipper container is left on the engine.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import DEFAULT_PORTS, built_local_base, local_cluster, port_open, processes_under
from clipper_admin import ClipperException
from clipper_admin.container_manager import CLIPPER_DOCKER_LABEL
from clipper_admin.docker.docker_container_manager import engine
from clipper_admin.docker.images import (
    CLIENT_PYTHON, available_base_image, default_base_image)
from clipper_admin.local import stop_all_local_clusters


@pytest.fixture(scope="session", autouse=True)
def clipper_state_dir(tmp_path_factory):
    """A private state directory for the whole session; fails the run on leftovers."""
    base = Path(tempfile.mkdtemp(prefix="clst-", dir="/tmp"))
    previous = os.environ.get("CLIPPER_STATE_DIR")
    os.environ["CLIPPER_STATE_DIR"] = str(base)
    # Temporary files too (saved functions, the Ray nodes' state): removed with the rest, and
    # apart from those of another run of the tests on the machine.
    tmp_path_factory.getbasetemp()     # pytest's tmp_path stays short: state directories in it hold sockets
    scratch, previous_scratch = base / "tmp", (os.environ.get("TMPDIR"), tempfile.tempdir)
    scratch.mkdir()
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)
    busy_before = {port for port in DEFAULT_PORTS if port_open(port)}
    yield base
    leftovers = processes_under(base)
    busy_after = {port for port in DEFAULT_PORTS if port_open(port)} - busy_before
    stop_all_local_clusters(graceful=False)
    shutil.rmtree(base, ignore_errors=True)
    if previous is None:
        os.environ.pop("CLIPPER_STATE_DIR", None)
    else:
        os.environ["CLIPPER_STATE_DIR"] = previous
    if previous_scratch[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous_scratch[0]
    tempfile.tempdir = previous_scratch[1]
    assert not leftovers, f"processes left behind: {[(p.pid, p.cmdline()[:4]) for p in leftovers]}"
    assert not busy_after, f"ports left open: {sorted(busy_after)}"


@pytest.fixture(scope="module")
def clipper_conn():
    """One cluster on the default ports, shared by the tests of a module."""
    with local_cluster() as conn:
        yield conn


# ---- Docker: a real engine, and a base image built here (no image can be pulled) ----
NO_DOCKER_ENGINE = "unix:///nonexistent/docker.sock"


@pytest.fixture(autouse=True)
def docker_engine_out_of_reach(request, monkeypatch):
    """closeClipper.py (and `clipper stop`) without --cluster stops every Clipper cluster of
    the Docker engine it reaches: a test that does not ask for the engine (docker_client, whose
    check refuses to run beside a user's clusters) runs it with no engine to reach, so the
    tests never stop a Docker cluster of the user's."""
    if "docker_client" not in request.fixturenames:
        monkeypatch.setenv("DOCKER_HOST", NO_DOCKER_ENGINE)


def clipper_containers(client):
    return client.containers.list(all=True, filters={"label": CLIPPER_DOCKER_LABEL})


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = engine()
    except ClipperException as error:
        pytest.skip(str(error))
    running = clipper_containers(client)
    # The tests run closeClipper.py, which stops every Clipper cluster of the engine.
    assert not running, (f"Clipper containers run on this engine ({', '.join(c.name for c in running[:5])}): "
                         f"the Docker tests would stop them. Stop your clusters first (python "
                         f"closeClipper.py), or give the tests another engine (DOCKER_HOST)")
    yield client
    left = clipper_containers(client)
    for container in left:
        container.remove(force=True)
    volumes = client.volumes.list(filters={"label": CLIPPER_DOCKER_LABEL})
    for volume in volumes:
        volume.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"
    assert not volumes, f"volumes left behind: {[v.name for v in volumes]}"


@pytest.fixture(scope="session")
def base_image(docker_client):
    """The client's default base if it can be had; else the local Debian base, built once."""
    try:
        return available_base_image(docker_client, default_base_image())
    except ClipperException as error:
        unavailable = str(error)
    return built_local_base(CLIENT_PYTHON, unavailable)


@pytest.fixture(scope="session")
def ray_cluster():
    """A three-node Ray cluster on 127.0.0.1 (tests/ray/ray_cluster.py); skips without Ray."""
    from ray_cluster import loopback_ray_cluster     # tests/ray is on sys.path for its tests
    with loopback_ray_cluster() as cluster:
        yield cluster
