"""Model replicas on the Ray backend: placement over nodes, scaling, logs, GPUs."""
import os
import signal
import time

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from clipper_admin import ClipperConnection, ClipperException
from clipper_admin.deployers import python as python_deployer
from clipper_admin.ray import RayContainerManager
from helpers import wait_for


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def replica_series(conn, name):
    """The clipper_mc_pred_total series of model ``name``'s replicas on the metrics port."""
    text = requests.get(f"http://{conn.cm.get_metric_addr()}/metrics", timeout=10).text
    return [{"replica": s.labels["replica"], "value": s.value}
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "clipper_mc_pred_total" and s.labels.get("model_name") == name]


def connected_replicas(conn, name):
    return [r for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == name]


@pytest.fixture
def ray_clipper(ray_cluster):
    conns = []

    def start(cluster_name, **manager_kwargs):
        conn = ClipperConnection(RayContainerManager(cluster_name=cluster_name, **manager_kwargs))
        conn.start_clipper()
        conns.append(conn)
        return conn
    yield start
    for conn in conns:
        conn.stop_all()


def test_replicas_spread_over_the_nodes_and_scale(ray_cluster, ray_clipper, tmp_path):
    conn = ray_clipper("spread")
    conn.register_application("spread", "doubles", "-1.0", 1000000)
    python_deployer.deploy_python_closure(conn, name="spread-model", version=1, input_type="doubles",
                                          func=feature_sum, num_replicas=3)
    conn.link_model_to_app("spread", "spread-model")
    placed = conn.cm.replica_info("spread-model", 1)
    node_order = [node["node_id"] for node in ray_cluster["nodes"]]
    print("replica -> node:", {index: node_order.index(info["node_id"]) for index, info in placed.items()})
    assert len({info["node_id"] for info in placed.values()}) == 3, placed

    conn.set_num_replicas("spread-model", 5)
    assert len(connected_replicas(conn, "spread-model")) == 5
    assert conn.get_num_replicas("spread-model") == 5
    answer = requests.post(f"http://{conn.get_query_addr()}/spread/predict", json={"input": [1.0, 2.5]})
    assert answer.json() == {"query_id": answer.json()["query_id"], "output": 3.5, "default": False}
    # Each replica's metrics reach the frontends' node (forwarded by its actor), one series each.
    # A replica writes its file at most once a second and its actor forwards it in turn:
    # the prediction's count arrives after the five series may have.
    wait_for(lambda: len(replica_series(conn, "spread-model")) == 5, 15, "5 replicas' metrics")
    wait_for(lambda: sum(float(s["value"]) for s in replica_series(conn, "spread-model")) >= 1, 15,
             "the prediction counted in the replicas' metrics")

    before = conn.cm.replica_info("spread-model", 1)
    conn.set_num_replicas("spread-model", 1)
    assert len(connected_replicas(conn, "spread-model")) == 1
    stopped = [info["process_pid"] for index, info in before.items() if index >= 1]
    assert not [pid for pid in stopped if psutil.pid_exists(pid)], "scaled-down replicas still run"
    wait_for(lambda: len(replica_series(conn, "spread-model")) == 1, 15, "the stopped replicas' metrics gone")

    # Another process (here: another manager) finds the cluster through Ray.
    other = ClipperConnection(RayContainerManager(cluster_name="spread"))
    other.connect()
    assert other.get_num_replicas("spread-model") == 1
    logs = other.get_clipper_logs(str(tmp_path))
    assert any("query-frontend" in path for path in logs), logs
    assert any("model-spread-model_1_0" in path for path in logs), logs


def test_each_gpu_replica_gets_its_own_gpu_and_an_extra_one_waits(ray_cluster, ray_clipper):
    conn = ray_clipper("gpus")
    python_deployer.deploy_python_closure(conn, name="gpu-model", version=1, input_type="doubles",
                                          func=feature_sum, num_replicas=2, num_gpus=1)
    placed = conn.cm.replica_info("gpu-model", 1)
    devices = [psutil.Process(info["process_pid"]).environ().get("CUDA_VISIBLE_DEVICES")
               for info in placed.values()]
    assert sorted(devices) == ["0", "1"], devices
    assert {info["node_id"] for info in placed.values()} == {ray_cluster["nodes"][1]["node_id"]}

    started = time.monotonic()
    with pytest.raises(ClipperException) as refused:     # a new replica also asks for 1 GPU
        conn.set_num_replicas("gpu-model", 3)
    print(f"refused after {time.monotonic() - started:.1f} s: {refused.value}")
    assert "2 of 3 replicas" in str(refused.value)
    assert "waiting for resources" in str(refused.value) and "GPU: needs 1" in str(refused.value)
    assert len(connected_replicas(conn, "gpu-model")) == 2     # the others keep serving
    conn.set_num_replicas("gpu-model", 2)                      # the waiting one is dropped
    assert conn.get_num_replicas("gpu-model") == 2


def test_the_frontends_actor_killed_is_restarted_and_the_servers_keep_serving(ray_clipper):
    conn = ray_clipper("restart")
    python_deployer.create_endpoint(conn, "steady", "doubles", feature_sum, default_output="-1.0")
    ray = pytest.importorskip("ray")
    first = ray.get(conn.cm._frontends().info.remote())
    os.kill(first["pid"], signal.SIGKILL)
    url = f"http://{conn.get_query_addr()}/steady/predict"
    assert requests.post(url, json={"input": [1.0, 2.0]}).json()["output"] == 3.0
    deadline = time.monotonic() + 60
    while True:                    # Ray restarts the actor, which takes the servers back
        try:
            again = ray.get(conn.cm._frontends().info.remote(), timeout=5)
            break
        except ray.exceptions.RayError:
            assert time.monotonic() < deadline, "the frontends' actor was not restarted"
            time.sleep(0.2)
    assert again["pid"] != first["pid"]
    assert requests.post(url, json={"input": [2.0, 2.0]}).json()["output"] == 4.0
    conn.set_num_replicas("steady", 2)        # model files still there for a new replica
    assert len(connected_replicas(conn, "steady")) == 2
