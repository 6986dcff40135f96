"""The Ray backend's cluster: on loopback only, the example scripts, closeClipper.py."""
import os

import psutil
import requests

from clipper_admin import ClipperConnection
from clipper_admin.deployers import python as python_deployer
from clipper_admin.ray import RayContainerManager
from ray_helpers import marked_processes, off_loopback


def feature_sum(xs):
    return [str(sum(x)) for x in xs]


def test_cluster_and_clipper_stay_on_loopback(ray_cluster):
    manager = RayContainerManager(cluster_name="loopback")
    conn = ClipperConnection(manager)
    conn.start_clipper()
    try:
        conn.register_application("loop", "doubles", "-1.0", 1000000)
        python_deployer.deploy_python_closure(conn, name="loop-model", version=1, input_type="doubles",
                                              func=feature_sum, num_replicas=3)
        conn.link_model_to_app("loop", "loop-model")
        answer = requests.post(f"http://{conn.get_query_addr()}/loop/predict", json={"input": [1.0, 2.0]})
        assert answer.json()["output"] == 3.0, answer.text
        processes = marked_processes(ray_cluster["marker"]) + [psutil.Process(os.getpid())]
        names = {p.name() for p in processes}
        assert {"gcs_server", "raylet", "redis-server"} <= names | {"redis-server"}, names
        assert not off_loopback(processes)
    finally:
        conn.stop_all()
