"""Shared fixtures: an isolated state directory, real local clusters, and a leak check.

Every test session gets its own CLIPPER_STATE_DIR, so it never touches a user's clusters,
and fails if any process it started (found by the CLIPPER_CLUSTER_DIR marker) or any
Clipper port is still there at the end. Docker tests skip, saying why, without an engine or
a base image, and fail the session if a Clipper container is left on the engine.
"""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipper.cluster.registry import cluster_path_of  # noqa: E402
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager  # noqa: E402
from clipper_admin.container_manager import CLIPPER_DOCKER_LABEL  # noqa: E402
from clipper_admin.docker.docker_container_manager import engine  # noqa: E402
from clipper_admin.docker.images import (  # noqa: E402
    CLIENT_PYTHON, available_base_image, default_base_image, local_base_image)
from clipper_admin.local import stop_all_local_clusters  # noqa: E402

DEFAULT_PORTS = (1337, 1338, 7000, 1390)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def processes_under(base: Path):
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            marker = cluster_path_of(process) or ""
            if marker.startswith(str(base)) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


@pytest.fixture(scope="session", autouse=True)
def clipper_state_dir():
    """A private state directory for the whole session; fails the run on leftovers."""
    base = Path(tempfile.mkdtemp(prefix="clst-", dir="/tmp"))
    previous = os.environ.get("CLIPPER_STATE_DIR")
    os.environ["CLIPPER_STATE_DIR"] = str(base)
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
    assert not leftovers, f"processes left behind: {[(p.pid, p.cmdline()[:4]) for p in leftovers]}"
    assert not busy_after, f"ports left open: {sorted(busy_after)}"


@contextlib.contextmanager
def local_cluster(name="test-cluster", query_port=1337, management_port=1338, rpc_port=7000,
                  metric_port=1390, **start_kwargs):
    """A real local cluster for the duration of the block."""
    manager = LocalContainerManager(cluster_name=name, clipper_query_port=query_port,
                                    clipper_management_port=management_port,
                                    clipper_rpc_port=rpc_port, clipper_metric_port=metric_port)
    conn = ClipperConnection(manager)
    conn.start_clipper(**start_kwargs)
    try:
        yield conn
    finally:
        conn.stop_all(graceful=False)


@pytest.fixture(scope="module")
def clipper_conn():
    """One cluster on the default ports, shared by the tests of a module."""
    with local_cluster() as conn:
        yield conn


# ---- Docker: a real engine, and a base image built here (no image can be pulled) ----
def clipper_containers(client):
    return client.containers.list(all=True, filters={"label": CLIPPER_DOCKER_LABEL})


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = engine()
    except ClipperException as error:
        pytest.skip(str(error))
    assert not clipper_containers(client), "Clipper containers were running before the tests"
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


def built_local_base(python, unavailable=""):
    """docker/build-local-base.sh's base with ``python``, built if needed; else skip, saying why."""
    local_base = local_base_image(python)
    if local_base is None:
        pytest.skip(f"{unavailable} (no Debian release has Python {python})")
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        pytest.skip(f"{unavailable} (building {local_base} needs root and debootstrap)")
    build = subprocess.run(["sh", str(ROOT / "docker" / "build-local-base.sh"), python],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"could not build {local_base}: {build.stderr[-800:]}")
    return local_base


@pytest.fixture(scope="session")
def ray_cluster():
    """A three-node Ray cluster on 127.0.0.1 (tests/ray/ray_cluster.py); skips without Ray."""
    from ray_cluster import loopback_ray_cluster     # tests/ray is on sys.path for its tests
    with loopback_ray_cluster() as cluster:
        yield cluster
