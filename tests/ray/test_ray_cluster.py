"""The Ray backend's cluster: on loopback only, the example scripts, closeClipper.py."""
import os
import socket

import psutil
import pytest
import requests

from clipper.cluster.cluster_dir import processes_marked_with
from clipper_admin import ClipperConnection, ClipperException
from clipper_admin.deployers import python as python_deployer
from clipper_admin.ray import RayContainerManager
from clipper_admin.ray.node_state import frontends_state_dir, node_state_dir
from ray_cluster import other_loopback_ray_cluster
from ray_helpers import assert_nothing_left, marked_processes, off_loopback, run_script


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def test_cluster_and_clipper_stay_on_loopback(ray_cluster):
    # With an admin token, the replicas also authenticate to the RPC port (CURVE keys). The
    # serving limits reach the frontends the Ray actor starts.
    manager = RayContainerManager(cluster_name="loopback", admin_token="a-token", max_batch_size=2)
    conn = ClipperConnection(manager)
    conn.start_clipper()
    try:
        conn.register_application("loop", "doubles", "-1.0", 1000000)
        python_deployer.deploy_python_closure(conn, name="loop-model", version=1, input_type="doubles",
                                              func=feature_sum, num_replicas=3)
        conn.link_model_to_app("loop", "loop-model")
        answer = requests.post(f"http://{conn.get_query_addr()}/loop/predict", json={"input": [1.0, 2.0]})
        assert answer.json()["output"] == 3.0, answer.text
        too_many = requests.post(f"http://{conn.get_query_addr()}/loop/predict",
                                 json={"input_batch": [[1.0]] * 3})
        assert too_many.status_code == 413 and "more than 2" in too_many.text, too_many.text
        # Every process of the cluster, Ray's and Clipper's, and this one (a Ray driver).
        processes = marked_processes(ray_cluster["marker"]) + [psutil.Process(os.getpid())]
        names = [p.name() for p in processes]
        assert names.count("raylet") == 3 and "gcs_server" in names, names
        assert len([p for p in processes if p.cmdline()[1:4] == ["-m", "clipper", "model-container"]]) == 3
        listening = {c.laddr.port for p in processes for c in p.net_connections("inet") if c.status == "LISTEN"}
        assert {1337, 1338, 7000, 1390} <= listening
        assert not off_loopback(processes)
    finally:
        conn.stop_all()


def test_a_taken_port_is_one_clear_error_and_leaves_nothing(ray_cluster):
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 1337))
        blocker.listen()
        with pytest.raises(ClipperException) as refused:
            ClipperConnection(RayContainerManager(cluster_name="taken")).start_clipper()
    assert str(refused.value).startswith("Clipper did not start: Port 1337 (query frontend) is already "
                                         "in use on 127.0.0.1"), str(refused.value)
    assert_nothing_left(ray_cluster["marker"])


START_ON_THE_OTHER_RAY_CLUSTER = """
import sys
from clipper_admin import ClipperConnection
from clipper_admin.ray import RayContainerManager
ClipperConnection(RayContainerManager(cluster_name=(sys.argv[1:] or ["twin"])[0])).start_clipper()
"""


def assert_refused_as_another_ray_clusters(run):
    assert run.returncode != 0 and "belongs to another Ray cluster" in run.stderr, run.stderr[-2000:]


def test_a_second_ray_cluster_on_the_machine_neither_takes_nor_stops_the_first_ones_servers(ray_cluster):
    # Both Ray clusters' nodes keep Clipper's state in $TMPDIR/clipper-ray-<uid>/clipper/twin.
    conn = ClipperConnection(RayContainerManager(cluster_name="twin"))
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(conn, "twin-app", "doubles", feature_sum, slo_micros=2_000_000)
        url = f"http://{conn.get_query_addr()}/twin-app/predict"
        assert requests.post(url, json={"input": [1.0, 2.0]}, timeout=10).json()["output"] == 3
        with other_loopback_ray_cluster() as other:
            assert_refused_as_another_ray_clusters(run_script("-c", START_ON_THE_OTHER_RAY_CLUSTER, env=other["env"]))
            stopped = run_script("closeClipper.py", "--backend", "ray", env=other["env"])
            assert stopped.returncode == 0, stopped.stderr[-2000:]
        answer = requests.post(url, json={"input": [1.0, 2.0]}, timeout=10).json()
        assert answer["output"] == 3 and not answer["default"], answer
    finally:
        conn.stop_all()


def test_a_second_ray_cluster_does_not_take_over_the_first_ones_state_when_its_servers_are_down(ray_cluster):
    # The first Ray cluster's servers stop behind its frontends' actor (as if killed). The
    # second must not start its own on their directory and Redis data: it would serve the
    # first one's applications, and the first one's stop_all would stop its servers.
    conn = ClipperConnection(RayContainerManager(cluster_name="twin"))
    conn.start_clipper()
    try:
        down = stop_servers_behind_the_actor("twin")
        assert down.returncode == 0 and not requests_answer(conn), down.stderr[-2000:]
        with other_loopback_ray_cluster() as other:
            assert_refused_as_another_ray_clusters(run_script("-c", START_ON_THE_OTHER_RAY_CLUSTER, env=other["env"]))
    finally:
        conn.stop_all()


def test_the_state_left_by_a_ray_cluster_that_is_gone_is_taken_over(ray_cluster):
    # A Ray cluster stopped (and, say, started again: a new session) must not lock its
    # Clipper cluster's directory on the node for good.
    with other_loopback_ray_cluster() as other:
        started = run_script("-c", START_ON_THE_OTHER_RAY_CLUSTER, "gone", env=other["env"])
        assert started.returncode == 0, started.stderr[-2000:]
        down = stop_servers_behind_the_actor("gone")
        assert down.returncode == 0, down.stderr[-2000:]
    conn = ClipperConnection(RayContainerManager(cluster_name="gone"))
    conn.start_clipper()
    try:
        assert conn.get_all_apps() == []
    finally:
        conn.stop_all()


def test_close_clipper_stops_the_servers_that_a_ray_cluster_stopped_by_pid_left(ray_cluster):
    # Ray stopped by PID (as the README says) or crashed under a running Clipper cluster: the
    # frontends' servers outlive its actor and keep their ports, and no actor finds them.
    # closeClipper.py said "No Clipper cluster named 'left' is running." and left them.
    with other_loopback_ray_cluster() as other:
        started = run_script("-c", START_ON_THE_OTHER_RAY_CLUSTER, "left", env=other["env"])
        assert started.returncode == 0, started.stderr[-2000:]
        node_dir = node_state_dir(RayContainerManager().namespace, "left")
        servers = processes_marked_with(frontends_state_dir(node_dir) / "left")
        ray_processes = [p for p in marked_processes(other["marker"]) if p not in servers]
        for process in ray_processes:
            process.kill()
        psutil.wait_procs(ray_processes, timeout=10)
        assert all(server.is_running() for server in servers) and servers
        stopped = run_script("closeClipper.py", "--backend", "ray", "--cluster", "left", timeout=120)
        assert stopped.returncode == 0 and "Stopped Clipper Ray cluster 'left'" in stopped.stdout, \
            stopped.stdout + stopped.stderr[-2000:]
        assert not processes_marked_with(frontends_state_dir(node_dir) / "left") and not node_dir.exists()


def test_an_address_where_no_ray_cluster_listens_is_one_clear_error_at_once(ray_cluster):
    # ray.init retried it for minutes (over 150 s here), printing only Ray's own log lines.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))             # held, never listening: connections are refused
        address = "127.0.0.1:%d" % closed.getsockname()[1]
        run = run_script("-c", START_ON_THE_OTHER_RAY_CLUSTER, "nowhere", timeout=60,
                         env={**os.environ, "RAY_ADDRESS": address})
    assert run.returncode != 0 and f"No Ray cluster answers at '{address}'" in run.stderr, run.stderr[-2000:]


def stop_servers_behind_the_actor(cluster_name):
    """Stop the Clipper servers the frontends' actor runs on this machine, as the local backend's."""
    state = frontends_state_dir(node_state_dir(RayContainerManager().namespace, cluster_name))
    return run_script("closeClipper.py", "--backend", "local", timeout=120,
                      env={**os.environ, "CLIPPER_STATE_DIR": str(state)})


def requests_answer(conn):
    try:
        return requests.get(f"http://{conn.get_query_addr()}/metrics", timeout=5).ok
    except requests.ConnectionError:
        return False
