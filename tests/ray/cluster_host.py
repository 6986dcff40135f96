"""A Ray cluster of a head and two worker nodes on this machine, for the Ray backend's tests.

Run by tests/ray/ray_cluster.py as its own process with Ray's multi-node test harness
(ray.cluster_utils.Cluster): every node is its own set of processes (GCS, raylet, agents),
as with `ray start`. Prints one JSON line (the address and each node's id and raylet pid),
then keeps the cluster until its stdin closes. With --head-only, the head alone. The environment ray_cluster.py gives it keeps
every listener and connection on 127.0.0.1.
"""
import json
import sys

from ray.cluster_utils import Cluster

GCS_PORT = int(sys.argv[1])
NODES = [  # the head also runs the frontends (Ray's node:__internal_head__ resource)
    {"num_cpus": 2},
    {"num_cpus": 2, "num_gpus": 2, "resources": {"gpu-node": 1}},   # logical GPUs
    {"num_cpus": 2},
]


def main():
    common = {"object_store_memory": 80 * 1024 * 1024, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**common, **NODES[0], "gcs_server_port": GCS_PORT})
    workers = [] if "--head-only" in sys.argv else [cluster.add_node(**common, **node_args) for node_args in NODES[1:]]
    nodes = [{"node_id": node.node_id, "raylet_pid": node.all_processes["raylet"][0].process.pid}
             for node in [cluster.head_node, *workers]]
    print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
    sys.stdin.read()
    cluster.shutdown()


if __name__ == "__main__":
    main()
