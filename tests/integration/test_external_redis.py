"""A cluster on a Redis the user already runs (redis_ip/redis_port), as Clipper allows."""
import subprocess
import time

import pytest
import redis
import requests

from clipper.cluster.redis_binary import find_redis_server
from clipper_admin.deployers import python as python_deployer
from helpers import total

REDIS_PORT = 16379


@pytest.fixture
def external_redis(tmp_path, request):
    extra = getattr(request, "param", [])
    server = subprocess.Popen([find_redis_server(), "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                               "--save", "", "--dir", str(tmp_path), *extra], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=REDIS_PORT)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield client
    server.terminate()
    server.wait(10)


def cluster_on_the_external_redis(name):
    """A started cluster of ``name`` whose state is in the external Redis."""
    from clipper_admin import ClipperConnection, LocalContainerManager
    conn = ClipperConnection(LocalContainerManager(
        cluster_name=name, clipper_query_port=12337, clipper_management_port=12338,
        clipper_rpc_port=17001, clipper_metric_port=12390, redis_ip="127.0.0.1", redis_port=REDIS_PORT))
    conn.start_clipper()
    return conn


def test_cluster_uses_the_given_redis_and_leaves_it_running(external_redis):
    conn = cluster_on_the_external_redis("external")
    manager = conn.cm
    try:
        python_deployer.create_endpoint(conn, "ext", "doubles", total)
        answer = requests.post(f"http://{conn.get_query_addr()}/ext/predict",
                               json={"input": [1.0, 2.0]}, timeout=10).json()
        assert answer["output"] == 3.0 and answer["default"] is False
        # Clipper's layout: the application hash in DB 5, the model in DB 2.
        assert redis.Redis(port=REDIS_PORT, db=5).hget("ext", "input_type") == b"doubles"
        assert redis.Redis(port=REDIS_PORT, db=2).exists("ext:1")
        assert not any(p["role"] == "redis" for p in manager.cluster.processes())
    finally:
        conn.stop_all()
    assert external_redis.ping()


# A Redis that refuses the wait for the query frontends' acknowledgement (before 6.0, BLPOP
# took whole seconds only and refused 1.0; here it is renamed away).
@pytest.mark.parametrize("external_redis", [["--rename-command", "BLPOP", ""]], indirect=True)
def test_a_change_applied_is_answered_as_applied_when_the_wait_for_the_frontends_fails(external_redis):
    """The change was made, yet the management frontend answered 500: an operator retrying
    it was then told the application already exists."""
    conn = cluster_on_the_external_redis("external-noblpop")
    try:
        conn.register_application("noblpop", "doubles", "0", 100000)
        assert conn.get_app_info("noblpop")["input_type"] == "doubles"
    finally:
        conn.stop_all()


def test_a_state_directory_too_long_for_a_unix_socket_still_serves_on_an_external_redis(
        external_redis, clipper_state_dir, monkeypatch):
    """Our replicas reach the query frontend over a Unix socket in the state directory, whose
    path has a length limit. On an external Redis no other socket lives there, and a long
    state directory path refused to start the cluster; its replicas now use TCP instead."""
    long_dir = clipper_state_dir / ("a-long-directory-name-" * 4)
    monkeypatch.setenv("CLIPPER_STATE_DIR", str(long_dir))
    conn = cluster_on_the_external_redis("long-path")
    try:
        assert len(str(conn.cm.cluster.path / "rpc-0.sock")) > 107      # over Linux's limit
        python_deployer.create_endpoint(conn, "long", "doubles", total)
        answer = requests.post(f"http://{conn.get_query_addr()}/long/predict",
                               json={"input": [1.0, 2.0]}, timeout=10).json()
        assert answer["output"] == 3.0 and answer["default"] is False
    finally:
        conn.stop_all()
