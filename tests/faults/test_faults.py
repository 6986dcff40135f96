"""Faults injected into a real local cluster: what users see, and what is kept."""
import contextlib
import os
import signal
import threading
import time

import pytest
import requests

from clipper.cluster.cluster_dir import FROZEN_SECONDS
from clipper_admin import ClipperException
from clipper_admin.deployers import python as python_deployer
from helpers import all_gone, local_cluster, total, wait_for
from loadgen import assert_all_answered_within, run_load

SLO_MICROS = 300_000


@pytest.fixture
def conn():
    with local_cluster(name="faults") as conn:
        python_deployer.create_endpoint(conn, "steady", "doubles", total, default_output="-1.0",
                                        slo_micros=SLO_MICROS)
        yield conn


def pid_of(conn, role, **details):
    for process in conn.cm.cluster.processes():
        if process["role"] == role and all(process.get(k) == v for k, v in details.items()):
            return process["pid"]
    return None


def kill(pid):
    os.kill(pid, signal.SIGKILL)


def predicts_for_real(conn, app="steady"):
    try:
        response = requests.post(f"http://{conn.get_query_addr()}/{app}/predict",
                                 json={"input": [1.0, 2.0]}, timeout=2)
        return response.status_code == 200 and response.json()["default"] is False
    except requests.RequestException:
        return False


def during_load(conn, seconds, fault_at, fault):
    """Steady load from 8 clients; ``fault()`` runs ``fault_at`` seconds in."""
    timer = threading.Timer(fault_at, fault)
    timer.start()
    try:
        return run_load(conn, "steady", clients=8, seconds=seconds, timeout=5)
    finally:
        timer.cancel()


def test_killed_replica_under_load_answers_within_the_objective_and_comes_back(conn):
    victim = pid_of(conn, "model-container", model_name="steady")
    killed = {}
    results = during_load(conn, 4, 1.0, lambda: killed.setdefault("at", time.monotonic()) and kill(victim))
    assert killed and results
    slowest = assert_all_answered_within(results, SLO_MICROS / 1e6 + 0.5, killed["at"])
    back = wait_for(lambda: predicts_for_real(conn), 5, "serving again after the replica died")
    assert back - killed["at"] < 5
    defaulted = [r for r in results if r.default]
    gap = max((r.sent_at + r.elapsed for r in defaulted), default=killed["at"]) - killed["at"]
    print(f"replica kill: {len(results)} requests, {len(defaulted)} default outputs, slowest "
          f"{slowest * 1000:.0f} ms, last default output {gap:.2f} s after the kill")
    assert pid_of(conn, "model-container", model_name="steady") not in (None, victim)


def exits_on_negative(xs):
    if any(x[0] < 0 for x in xs):
        os._exit(3)                # the model's process dies with the batch
    return [str(x[0]) for x in xs]


def test_a_query_whose_replica_dies_computing_it_is_told_so(conn):
    """Its default output said the objective was missed, as Clipper's; now it says why."""
    python_deployer.create_endpoint(conn, "fragile", "doubles", exits_on_negative, default_output="-1.0",
                                    slo_micros=1_000_000)
    lethal = requests.post(f"http://{conn.get_query_addr()}/fragile/predict", json={"input": [-1.0]}, timeout=10)
    assert lethal.status_code == 200 and lethal.json()["default"] is True, lethal.text
    assert "replica of the model was lost while computing" in lethal.json()["default_explanation"]
    wait_for(lambda: predicts_for_real(conn, "fragile"), 10, "the replica restarted")
    assert predicts_for_real(conn), "another model's queries were answered throughout"


def test_killed_query_frontend_is_restarted_and_containers_reconnect(conn):
    victim = pid_of(conn, "query-frontend")
    kill(victim)
    killed_at = time.monotonic()
    back = wait_for(lambda: predicts_for_real(conn), 15, "serving after the query frontend died")
    print(f"query frontend kill: serving again after {back - killed_at:.2f} s")
    assert pid_of(conn, "query-frontend") not in (None, victim)
    assert len(conn.get_all_model_replicas()) == 1


def test_killed_redis_loses_no_registration(conn):
    conn.register_model("extra", 2, "doubles", labels=["kept"])
    conn.set_num_replicas("steady", 2)
    before = (conn.get_all_apps(verbose=True), conn.get_all_models(verbose=True))
    kill(pid_of(conn, "redis"))
    killed_at = time.monotonic()
    back = wait_for(lambda: _replicas_listed(conn) == 2, 15, "Redis restarted and replicas listed again")
    print(f"redis kill: state complete again after {back - killed_at:.2f} s")
    assert (conn.get_all_apps(verbose=True), conn.get_all_models(verbose=True)) == before
    assert conn.get_num_replicas("steady") == 2
    assert predicts_for_real(conn)
    conn.register_application("after-restart", "doubles", "0", 100000)  # writes work again
    assert "after-restart" in conn.get_all_apps()


def test_management_frontend_restart_does_not_interrupt_predictions(conn):
    victim = pid_of(conn, "management-frontend")
    results = during_load(conn, 3, 0.5, lambda: kill(victim))
    assert results and all(r.status == 200 and r.default is False for r in results)
    print(f"management frontend kill: {len(results)} predictions, none failed or defaulted")
    wait_for(lambda: pid_of(conn, "management-frontend") not in (None, victim), 10,
             "management frontend restarted")
    wait_for(lambda: _pings(conn), 10, "management frontend answering")
    assert conn.get_app_info("steady")["linked_models"] == ["steady"]


@pytest.mark.parametrize("victim", ["management-frontend", "redis"])
def test_a_deploy_rides_out_a_restart_while_it_waits_for_its_replicas(conn, monkeypatch, victim):
    """The management frontend (or Redis) crashing while deploy_model waits for the new
    replicas: the supervisor restarts it within a second, and the deploy, already made, is
    reported done (it raised 'Could not reach Clipper' or 503, and said the applications
    would get their default output, while the replicas served)."""
    real = type(conn).get_all_model_replicas
    killed = []

    def first_call_meets_a_crash(self, verbose=False):
        if not killed:
            killed.append(pid_of(conn, victim))
            kill(killed[0])
            wait_for(lambda: all_gone(killed), 5, f"{victim} gone")
        return real(self, verbose)

    monkeypatch.setattr(type(conn), "get_all_model_replicas", first_call_meets_a_crash)
    python_deployer.deploy_python_closure(conn, "late", 1, "doubles", total, num_replicas=2)
    assert killed
    monkeypatch.undo()
    assert conn.get_num_replicas("late", "1") == 2
    assert len([r for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == "late"]) == 2


@contextlib.contextmanager
def frozen(pid):
    """The process stopped (SIGSTOP) for the block: it answers no one and does not exit."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("role, details", [("query-frontend", {}),
                                           ("model-container", {"model_name": "steady"})])
def test_a_frozen_process_is_replaced(conn, role, details):
    victim = pid_of(conn, role, **details)
    with frozen(victim) as stopped_at:
        wait_for(lambda: pid_of(conn, role, **details) not in (None, victim), FROZEN_SECONDS + 10,
                 f"the frozen {role} replaced")
        back = wait_for(lambda: predicts_for_real(conn), 15, "serving for real again")
        assert all_gone([victim])
    print(f"frozen {role}: serving for real again {back - stopped_at:.1f} s after it was stopped")


def test_a_frozen_supervisor_is_replaced_and_the_new_one_repairs(conn):
    cluster = conn.cm.cluster
    first = cluster.supervisor()
    with frozen(first.pid):
        wait_for(lambda: cluster.is_running() and cluster.supervisor() != first, FROZEN_SECONDS + 10,
                 "a new supervisor in place of the frozen one")
        replica = pid_of(conn, "model-container", model_name="steady")
        kill(replica)
        wait_for(lambda: pid_of(conn, "model-container", model_name="steady") not in (None, replica), 10,
                 "the killed replica restarted by the new supervisor")
        wait_for(lambda: predicts_for_real(conn), 15, "serving for real again")


def _pings(conn):
    try:
        return requests.get(f"http://{conn.cm.get_admin_addr()}/admin/ping", timeout=1).ok
    except requests.RequestException:
        return False


def _replicas_listed(conn):
    try:
        return len(conn.get_all_model_replicas())
    except ClipperException as error:   # 503 while Redis restarts
        assert "503" in str(error), error
        return None
