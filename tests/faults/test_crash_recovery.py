"""A local cluster's whole life through crashes: nothing is lost, nothing is left behind.

- its state directory deleted while it runs: stop_all() and closeClipper.py still find and
  stop every process (by the marker they all carry), and say how many;
- its supervisor killed with kill -9: a new one takes its place and keeps repairing;
- every process killed with kill -9 (as a power cut or a reboot would): connect(), or the
  `clipper recover` command, brings it back as it was, serving the same predictions.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from clipper.cluster.cluster_dir import cluster_processes
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper_admin.deployers import python as python_deployer
from helpers import ROOT, all_gone, local_cluster, port_open, wait_for
from scripts import run_script

NAME = "crashy"
PORTS = dict(query_port=1537, management_port=1538, rpc_port=7200, metric_port=1590)
INPUTS = [[1.0, 2.0, 3.0], [0.5, -4.0]]


def total(xs):
    return [str(sum(x)) for x in xs]


def doubled(xs):
    return [str(2 * sum(x)) for x in xs]


def predictions(conn, app):
    """The outputs of INPUTS, once none is a default output (replicas may still connect)."""
    deadline = time.monotonic() + 30
    while True:
        answers = [answer(conn, app, x) for x in INPUTS]
        if not any(a["default"] for a in answers):
            return [a["output"] for a in answers]
        assert time.monotonic() < deadline, f"{app} still answers defaults: {answers}"
        time.sleep(0.1)


def answer(conn, app, x):
    try:
        response = requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json={"input": x}, timeout=5)
    except requests.RequestException as error:
        return {"default": True, "error": str(error)}
    return response.json() if response.status_code == 200 else {"default": True, "error": response.text}


def assert_all_stopped(pids):
    wait_for(lambda: all_gone(pids), 10, "every process of the cluster stopping")
    open_ports = [port for port in PORTS.values() if port_open(port)]
    assert not open_ports, f"ports {open_ports} still listened on, by {listeners(open_ports)}"


def listeners(ports):
    """Who holds ``ports``: pid and command line, to tell a survivor from a stranger."""
    found = []
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port in ports and connection.pid:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(connection.pid)
                found.append((connection.laddr.port, connection.pid, " ".join(process.cmdline())[:200]))
    return found


@pytest.mark.parametrize("how", ["stop_all", "closeClipper.py"])
def test_a_deleted_state_directory_hides_no_process(how, clipper_state_dir):
    with local_cluster(NAME, **PORTS) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        pids = {p.pid for p in cluster_processes(conn.cm.cluster)}
        assert len(pids) == 6, "supervisor, watchdog, Redis, two frontends, one replica"
        shutil.rmtree(conn.cm.cluster.path)
        time.sleep(0.5)                       # the supervisor notices, and keeps serving
        assert predictions(conn, "sum") == [6.0, -3.5]
        if how == "stop_all":
            conn.stop_all()
        else:
            result = run_script("closeClipper.py", "--cluster", NAME)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == f"Stopped Clipper cluster '{NAME}' (6 processes)"
        assert_all_stopped(pids)


def test_a_killed_supervisor_is_replaced_and_keeps_repairing(clipper_state_dir):
    with local_cluster(NAME, **PORTS) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        cluster = conn.cm.cluster
        first = cluster.supervisor()
        replica = next(r for r in cluster.processes() if r["role"] == "model-container")
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: cluster.is_running() and cluster.supervisor() != first, 10,
                 "a new supervisor taking the place of the killed one")
        assert predictions(conn, "sum") == [6.0, -3.5]
        adopted = [r for r in cluster.processes() if r["role"] == "model-container"]
        assert [r["pid"] for r in adopted] == [replica["pid"]], "the running replica is adopted"

        os.kill(replica["pid"], signal.SIGKILL)   # repaired by the new supervisor
        wait_for(lambda: any(r["role"] == "model-container" and r["pid"] != replica["pid"]
                             for r in cluster.processes()), 10, "the killed replica restarting")
        assert predictions(conn, "sum") == [6.0, -3.5]
        other = ClipperConnection(LocalContainerManager(cluster_name=NAME))
        other.connect()
        assert other.get_all_apps() == ["sum"]


def test_a_stop_killed_before_it_stopped_anything_leaves_the_cluster_self_repairing(clipper_state_dir):
    """stop_all marks the cluster as stopping, then stops its supervisor: killed in between
    (kill -9), it left a running cluster marked, whose watchdog then never replaced a killed
    supervisor, so nothing restarted a crashed process, and connect() said no cluster ran
    while it served."""
    with local_cluster(NAME, **PORTS) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        cluster = conn.cm.cluster
        # The stopper's first step, in a process that is gone afterwards (as if killed).
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from clipper.cluster.cluster_dir import ClusterDir; "
                        "ClusterDir(Path(sys.argv[1])).mark_stopping()", str(cluster.path)],
                       cwd=ROOT, check=True)
        assert cluster.is_stopping()
        first = cluster.supervisor()
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: cluster.is_running() and cluster.supervisor() != first, 10,
                 "a new supervisor taking the place of the killed one")
        replica = next(r for r in cluster.processes() if r["role"] == "model-container")
        os.kill(replica["pid"], signal.SIGKILL)
        wait_for(lambda: any(r["role"] == "model-container" and r["pid"] != replica["pid"]
                             for r in cluster.processes()), 10, "the killed replica restarting")
        assert predictions(conn, "sum") == [6.0, -3.5]
        ClipperConnection(LocalContainerManager(cluster_name=NAME)).connect()
        # The running cluster is no longer marked: a change made while its supervisor is
        # replaced again is applied (it failed at once: "did not apply the change").
        assert not cluster.is_stopping()
        os.kill(cluster.supervisor().pid, signal.SIGKILL)
        conn.set_num_replicas("sum", 2)
        assert conn.get_num_replicas("sum") == 2


def test_a_change_made_while_the_supervisor_is_replaced_is_applied_and_says_so(clipper_state_dir):
    """set_num_replicas right after a kill -9 of the supervisor said "did not apply the
    change" at once, and the change was then applied by its successor."""
    with local_cluster(NAME, **PORTS) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        os.kill(conn.cm.cluster.supervisor().pid, signal.SIGKILL)
        conn.set_num_replicas("sum", 2)
        assert conn.get_num_replicas("sum") == 2
        assert predictions(conn, "sum") == [6.0, -3.5]


def state_of(conn):
    return {"apps": sorted(conn.get_all_apps(verbose=True), key=lambda a: a["name"]),
            "models": sorted(conn.get_all_models(verbose=True), key=lambda m: (m["model_name"], m["model_version"])),
            "links": {app: conn.get_linked_models(app) for app in ("sum", "other")},
            "replicas": {version: conn.cm.get_num_replicas("calc", version) for version in ("1", "2")}}


@pytest.mark.parametrize("recover_with", ["connect()", "clipper recover"])
def test_after_every_process_is_killed_the_cluster_comes_back_as_it_was(recover_with, clipper_state_dir):
    with local_cluster(NAME, **PORTS) as conn:
        python_deployer.deploy_python_closure(conn, "calc", "1", "doubles", total)
        python_deployer.deploy_python_closure(conn, "calc", "2", "doubles", doubled, num_replicas=2)
        for app in ("sum", "other"):
            conn.register_application(app, "doubles", "-1.0", 100000)
            conn.link_model_to_app(app, "calc")
        before = state_of(conn), predictions(conn, "sum"), predictions(conn, "other")
        assert before[1] == [12.0, -7.0] and before[2] == before[1]
        assert before[0]["replicas"] == {"1": 1, "2": 2}

        processes = cluster_processes(conn.cm.cluster)
        for stop in (signal.SIGSTOP, signal.SIGKILL):   # all at once, as a power cut: none reacts
            for process in processes:
                process.send_signal(stop)
        assert_all_stopped([p.pid for p in processes])

        again = ClipperConnection(LocalContainerManager(cluster_name=NAME))
        if recover_with == "connect()":
            again.connect()
        else:
            # A look at it first tells what happened and starts nothing.
            looked = subprocess.run([sys.executable, "-m", "clipper_admin.cli", "status",
                                     f"--cluster-name={NAME}"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=120)
            assert looked.returncode == 1 and "clipper recover" in looked.stderr, looked.stderr
            assert not conn.cm.cluster.is_running()
            result = subprocess.run([sys.executable, "-m", "clipper_admin.cli", "recover",
                                     f"--cluster-name={NAME}"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=120)
            assert result.returncode == 0, result.stderr
            assert f"Cluster '{NAME}' is running" in result.stdout
            again.connect()
        assert (state_of(again), predictions(again, "sum"), predictions(again, "other")) == before

        again.stop_all()                          # still wipes the whole cluster
        assert not conn.cm.cluster.path.exists()
        with pytest.raises(ClipperException, match="No running Clipper cluster"):
            ClipperConnection(LocalContainerManager(cluster_name=NAME)).connect()
        nothing = subprocess.run([sys.executable, "-m", "clipper_admin.cli", "recover", f"--cluster-name={NAME}"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert nothing.returncode == 1 and "has nothing to recover" in nothing.stderr, nothing.stderr


def test_a_start_over_a_crashed_cluster_says_what_it_replaces(clipper_state_dir, caplog):
    with local_cluster(NAME, **PORTS) as conn:
        conn.register_application("kept", "doubles", "-1.0", 100000)
        processes = cluster_processes(conn.cm.cluster)
        for process in processes:
            process.kill()
        assert_all_stopped([p.pid for p in processes])
        fresh = ClipperConnection(LocalContainerManager(cluster_name=NAME, **{
            f"clipper_{kind}": port for kind, port in PORTS.items()}))
        fresh.start_clipper()
        assert fresh.get_all_apps() == []
        assert "had crashed; start_clipper() replaces it with a new, empty one" in caplog.text


def test_a_frontend_that_failed_before_the_crash_does_not_fail_the_recovery(clipper_state_dir):
    """The power cut came while the query frontend kept exiting (its cause since removed): the
    record of its failures, left by the dead supervisor, ended connect() at once with "keeps
    exiting" and the old log, before the new supervisor had started anything."""
    with local_cluster(NAME, **PORTS) as conn:
        cluster = conn.cm.cluster
        processes = cluster_processes(cluster)
        for stop in (signal.SIGSTOP, signal.SIGKILL):
            for process in processes:
                process.send_signal(stop)
        assert_all_stopped([p.pid for p in processes])
        frontend = next(p["name"] for p in cluster.processes() if p["name"].startswith("query"))
        cluster.write_processes(cluster.applied_generation(), cluster.processes(),
                                {frontend: {"failures": 3, "exit_code": 1}})

        again = ClipperConnection(LocalContainerManager(cluster_name=NAME))
        again.connect()
        assert again.get_all_apps() == []
