"""Logs stay bounded whatever clients and models do: a model that fails, or prints, on
every query must not fill the disk (the state directory holds Redis's append-only file)."""
import time

import pytest
import requests

from clipper_admin.deployers import python as python_deployer
from helpers import local_cluster, predict, wait_for

LOG_CAP = 200_000       # bytes: CLIPPER_MAX_LOG_SIZE of this test's cluster


def fails_loudly(xs):
    raise ValueError("no good: " + "z" * 100_000)


def chatty(xs):
    print("x" * 20_000, flush=True)
    return [str(len(x)) for x in xs]


@pytest.fixture(scope="module")
def cluster():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIPPER_MAX_LOG_SIZE", str(LOG_CAP))
        with local_cluster(name="logs", query_port=28337, management_port=28338, rpc_port=28000,
                           metric_port=28390) as conn:
            python_deployer.create_endpoint(conn, "loud", "doubles", fails_loudly, slo_micros=5_000_000)
            python_deployer.create_endpoint(conn, "chatty", "doubles", chatty, slo_micros=5_000_000)
            yield conn


def log_of(conn, model):
    return conn.cm.cluster.logs / f"model-{model}_1-0.log"


def test_a_model_error_reaches_the_client_bounded_and_the_log_a_few_times(cluster):
    """A huge message passed max_output_size once, and the query got no answer at all."""
    causes = []
    for value in range(40):
        response = predict(cluster, "loud", {"input": [float(value)]})
        assert response.status_code == 500
        causes.append(response.json()["cause"])
    assert causes[0].startswith("ValueError: no good: zzz") and causes[0].endswith("(100021 characters in all)")
    assert len(causes[0]) < 4100
    # 40 failing batches, each a traceback of 100 kB: five per 10 s are logged (the two logs:
    # it passed the cap of this cluster); 200 logged, as before, would be 20 MB.
    log = log_of(cluster, "loud")
    logged = log.read_text() + (log.with_name(log.name + ".1").read_text() if log.with_name(log.name + ".1").exists() else "")
    assert 1 <= logged.count("Traceback") <= 10


def test_a_chatty_model_keeps_its_log_under_the_cap(cluster):
    for value in range(60):          # 60 batches of at least 20 kB: 1.2 MB printed
        assert predict(cluster, "chatty", {"input": [float(value)]}).status_code == 200
    log = log_of(cluster, "chatty")
    wait_for(lambda: log.stat().st_size <= LOG_CAP, 5, "the log started afresh")
    previous = log.with_name(log.name + ".1")
    assert 0 < previous.stat().st_size <= LOG_CAP       # the end of the previous one
    assert "x" * 1000 in log.read_text() + previous.read_text()      # the latest output is kept
    assert predict(cluster, "chatty", {"input": [1.0]}).json()["output"] == 1
