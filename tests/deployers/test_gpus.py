"""GPUs per replica on the local backend: each replica sees its own devices through
CUDA_VISIBLE_DEVICES. No GPU is needed: CLIPPER_GPU_COUNT tells the cluster how many the
machine has, as a user would where detection cannot see them."""
import collections
import os

import psutil
import pytest
import requests

from clipper.cluster.gpus import machine_gpus, pick_devices
from clipper_admin import ClipperException
from clipper_admin.deployers import python as python_deployer
from helpers import local_cluster

PORTS = dict(query_port=11337, management_port=11338, rpc_port=17000, metric_port=11390)


def visible_devices(inputs):
    return ["devices=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>") for _ in inputs]


@pytest.fixture(scope="module")
def four_gpu_cluster():
    previous = os.environ.get("CLIPPER_GPU_COUNT")
    os.environ["CLIPPER_GPU_COUNT"] = "4"
    try:
        with local_cluster(name="gpus", **PORTS) as conn:
            yield conn
    finally:
        if previous is None:
            os.environ.pop("CLIPPER_GPU_COUNT")
        else:
            os.environ["CLIPPER_GPU_COUNT"] = previous


def replica_devices(conn, name):
    """What each replica process of ``name`` has in its environment, by replica index."""
    return {record["replica"]: psutil.Process(record["pid"]).environ()["CUDA_VISIBLE_DEVICES"]
            for record in conn.cm.cluster.processes() if record.get("model_name") == name}


def answers(conn, app, count=12):
    url = f"http://{conn.get_query_addr()}/{app}/predict"
    return {requests.post(url, json={"input": [float(i)]}, timeout=10).json()["output"]
            for i in range(count)}


def test_replicas_get_their_own_devices_round_robin(four_gpu_cluster):
    conn = four_gpu_cluster
    python_deployer.create_endpoint(conn, "on-gpus", "doubles", visible_devices, num_replicas=3,
                                    num_gpus=2, slo_micros=5_000_000)
    assert replica_devices(conn, "on-gpus") == {0: "0,1", 1: "2,3", 2: "0,1"}
    assert answers(conn, "on-gpus") <= {"devices=0,1", "devices=2,3"}
    # Scaling up keeps two GPUs per replica; the new one gets the least used devices.
    conn.set_num_replicas("on-gpus", 4)
    assert replica_devices(conn, "on-gpus")[3] == "2,3"
    # Asking for none from now on: the next replica sees no GPU.
    conn.set_num_replicas("on-gpus", 5, num_gpus=0)
    assert replica_devices(conn, "on-gpus")[4] == ""


def test_a_replica_that_asked_for_none_sees_no_gpu(four_gpu_cluster):
    python_deployer.create_endpoint(four_gpu_cluster, "on-cpu", "doubles", visible_devices,
                                    slo_micros=5_000_000)
    assert replica_devices(four_gpu_cluster, "on-cpu") == {0: ""}
    assert answers(four_gpu_cluster, "on-cpu", 2) == {"devices="}


@pytest.mark.parametrize("num_gpus, complaint", [
    (5, "5 GPUs per replica were asked for, but this cluster has 4 \\(0,1,2,3\\)"),
    (-1, "num_gpus must be a whole number"),
    (1.5, "num_gpus must be a whole number"),
])
def test_impossible_gpu_requests_are_refused_before_anything_starts(four_gpu_cluster, num_gpus, complaint):
    with pytest.raises(ClipperException, match=complaint):
        python_deployer.deploy_python_closure(four_gpu_cluster, "too-many", 1, "doubles",
                                              visible_devices, num_gpus=num_gpus)
    assert four_gpu_cluster.get_model_info("too-many", 1) is None
    assert replica_devices(four_gpu_cluster, "too-many") == {}


def test_which_devices_a_machine_offers():
    assert machine_gpus({"CLIPPER_GPU_COUNT": "3"}) == ["0", "1", "2"]
    assert machine_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert machine_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    for count in ("many", "-1", "1.5", "\u00b2", "1000000000"):
        with pytest.raises(ValueError, match="CLIPPER_GPU_COUNT must be a number"):
            machine_gpus({"CLIPPER_GPU_COUNT": count})


def test_devices_go_to_the_least_used_first():
    in_use = collections.Counter({"0": 1, "1": 0, "2": 1})
    assert pick_devices(["0", "1", "2"], 2, in_use) == ["0", "1"]
    assert pick_devices(["0", "1", "2"], 0, in_use) == []
    with pytest.raises(ValueError, match="this cluster has none"):
        pick_devices([], 1, collections.Counter())
