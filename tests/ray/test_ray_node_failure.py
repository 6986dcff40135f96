"""Faults under load from 8 clients: a replica falls silent; a worker node of the Ray cluster
dies (kill -9 of its raylet). Clipper, not Ray, decides that a replica is gone.

Runs last (file order: test_ray_node_failure): the test cluster keeps one node fewer afterwards.
"""
import os
import signal
import threading
import time

import psutil

from clipper_admin import ClipperConnection
from clipper_admin.deployers import python as python_deployer
from clipper_admin.ray import RayContainerManager
from loadgen import assert_all_answered_within, run_load
from helpers import total

SLO_MICROS = 300000


def connected(conn, name="steady"):
    return [r for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == name]


def test_a_silent_replica_is_dropped_within_the_heartbeat_timeout_and_rejoins(ray_cluster):
    timeout = 2.0
    conn = ClipperConnection(RayContainerManager(cluster_name="silent", replica_timeout=timeout))
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(conn, "steady", "doubles", total, default_output="-1.0",
                                        slo_micros=SLO_MICROS, num_replicas=2)
        victim = psutil.Process(conn.cm.replica_info("steady", 1)[0]["process_pid"])
        frozen, dropped = {}, {}

        def freeze_and_watch():       # as a machine that vanished: no FIN, no heartbeat
            frozen["at"] = time.monotonic()
            victim.suspend()
            while len(connected(conn)) != 1 and time.monotonic() < frozen["at"] + 10:
                time.sleep(0.05)
            dropped["at"] = time.monotonic()

        timer = threading.Timer(1.0, freeze_and_watch)
        timer.start()
        results = run_load(conn, "steady", clients=8, seconds=6, timeout=5)
        timer.join()
        slowest = assert_all_answered_within(results, SLO_MICROS / 1e6 + 0.5, frozen["at"])
        assert dropped["at"] - frozen["at"] < timeout + 1.5, "the silent replica was not dropped in time"
        defaulted = [r for r in results if r.default]
        print(f"silent replica: dropped {dropped['at'] - frozen['at']:.1f} s after it froze "
              f"(timeout {timeout} s); {len(results)} requests, {len(defaulted)} default outputs, "
              f"slowest {slowest * 1000:.0f} ms")
        victim.resume()
        deadline = time.monotonic() + 30
        while len(connected(conn)) != 2:
            assert time.monotonic() < deadline, "the replica did not rejoin once it answered again"
            time.sleep(0.1)
    finally:
        conn.stop_all()


def test_node_killed_under_load_no_request_fails_and_replicas_come_back(ray_cluster):
    conn = ClipperConnection(RayContainerManager(cluster_name="node-failure"))
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(conn, "steady", "doubles", total, default_output="-1.0",
                                        slo_micros=SLO_MICROS, num_replicas=3)
        victim = ray_cluster["nodes"][2]
        placed = conn.cm.replica_info("steady", 1)
        assert victim["node_id"] in {info["node_id"] for info in placed.values()}, placed
        killed, recovered = {}, {}

        def kill_node_and_wait_for_recovery():
            killed["at"] = time.monotonic()
            os.kill(victim["raylet_pid"], signal.SIGKILL)
            deadline = killed["at"] + 60
            while time.monotonic() < deadline:
                now_placed = conn.cm.replica_info("steady", 1)
                connected = [r for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == "steady"]
                recovered["seen"] = (f"{len(now_placed)} replicas answering Ray, {len(connected)} "
                                     f"connected, on nodes {[i['node_id'][:8] for i in now_placed.values()]}")
                if len(now_placed) == 3 and len(connected) == 3 and \
                        victim["node_id"] not in {info["node_id"] for info in now_placed.values()}:
                    recovered["at"] = time.monotonic()
                    recovered["nodes"] = sorted(info["node_id"] for info in now_placed.values())
                    return
                time.sleep(0.1)

        timer = threading.Timer(2.0, kill_node_and_wait_for_recovery)
        timer.start()
        results = run_load(conn, "steady", clients=8, seconds=20, timeout=5)
        timer.join()

        assert killed and results
        slowest = assert_all_answered_within(results, SLO_MICROS / 1e6 + 0.5, killed["at"])
        assert "at" in recovered, f"the replicas did not all run again on the surviving nodes within " \
                                  f"60 s; last seen: {recovered.get('seen')}"
        # The dead node's replica does not live on beside its replacement, unmanaged.
        old = [info for info in placed.values() if info["node_id"] == victim["node_id"]][0]
        assert not psutil.pid_exists(old["process_pid"]) and not psutil.pid_exists(old["pid"])
        surviving = {node["node_id"] for node in ray_cluster["nodes"][:2]}
        assert set(recovered["nodes"]) <= surviving
        defaulted = [r for r in results if r.default]
        print(f"node kill: {len(results)} requests, none failed, {len(defaulted)} default outputs, "
              f"slowest {slowest * 1000:.0f} ms; all 3 replicas running again on the 2 surviving nodes "
              f"{recovered['at'] - killed['at']:.1f} s after the kill")
    finally:
        conn.stop_all()
