"""Several query frontend workers on one query port (SO_REUSEPORT), replicas serving them all."""
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import redis
import requests

from clipper import redis_schema as schema
from clipper.cluster.cluster_dir import cluster_processes
from clipper.config import Config
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper_admin import cli
from clipper_admin.deployers import python as python_deployer
from helpers import all_gone, processes_under, wait_for

WORKERS = 2
BATCH_SIZE = 4          # the most inputs one worker puts in a batch


def batch_sizes(xs):
    """Each output: the size of the batch its input came in (the model call's, after merging)."""
    import time
    time.sleep(0.02)    # queries queue up while a batch runs
    return [str(len(xs)) for _ in xs]


@pytest.fixture(scope="module")
def conn():
    manager = LocalContainerManager(cluster_name="workers", query_workers=WORKERS)
    conn = ClipperConnection(manager)
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(conn, "sizes", "doubles", batch_sizes, default_output="-1",
                                        slo_micros=5_000_000, batch_size=BATCH_SIZE)
        yield conn
    finally:
        conn.stop_all(graceful=False)


def pids(conn):
    return {p["name"]: p["pid"] for p in conn.cm.cluster.processes()}


def predict_on_new_connections(conn, count, first=0, clients=32, retry_reset=False):
    """``count`` distinct predictions, each on a connection of its own (the kernel picks its
    worker); their JSON answers. ``retry_reset``: a connection reset is retried once."""
    def post(n):
        return requests.post(f"http://{conn.get_query_addr()}/sizes/predict",
                             json={"input": [float(n), 0.5]}, timeout=10)

    def one(n):
        try:
            response = post(n)
        except requests.ConnectionError:
            if not retry_reset:
                raise
            response = post(n)
        assert response.status_code == 200, response.text
        return response.json()
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(first, first + count)))


def counters(document):
    return {name: int(value["count"]) for entry in document["counters"] for name, value in entry.items()}


def worker_counts(conn):
    """Predictions per worker, from the snapshots each worker publishes to Redis."""
    url = Config(**conn.cm.cluster.settings()["config"]).redis_url
    client = redis.Redis.from_url(url, db=schema.WORKER_METRICS_DB)
    try:
        values = client.mget([schema.worker_metrics_key(k) for k in range(WORKERS)])
    finally:
        client.close()
    return [orjson.loads(v)["internal:aggregate_num_predictions"][1]["count"] if v else 0 for v in values]


def test_workers_share_the_load_batches_merge_and_metrics_count_the_cluster(conn):
    assert {"query-frontend", "query-frontend-1"} <= set(pids(conn))
    answers = predict_on_new_connections(conn, 600)
    assert not [a for a in answers if a["default"]], "every query answered by the model"
    # One worker sends at most BATCH_SIZE inputs per batch: a larger model call merged the
    # batches of both workers. Most queries are answered by such calls (the workers' batches
    # do not alternate, call by call).
    merged = [a for a in answers if int(a["output"]) > BATCH_SIZE]
    assert len(merged) > len(answers) / 2, sorted(int(a["output"]) for a in answers)
    wait_for(lambda: sum(worker_counts(conn)) == 600, 10, "every worker publishing its count")
    assert all(count > 0 for count in worker_counts(conn)), worker_counts(conn)
    # Whichever worker answers /metrics reports both workers' predictions (once each has
    # read the other's latest snapshot), and so does the Prometheus port.
    def reported():
        return counters(requests.get(f"http://{conn.get_query_addr()}/metrics", timeout=10).json())
    wait_for(lambda: all(reported()["app:sizes:num_predictions"] == 600 for _ in range(6)), 5,
             "/metrics counting every prediction")
    # The Prometheus port is one worker's: it counts the other's predictions once it has read
    # the other's next snapshot, which the reads above need not have waited for.
    wait_for(lambda: "app_sizes_num_predictions_count 600.0" in requests.get(
        f"http://{conn.cm.get_metric_addr()}/metrics", timeout=10).text, 5,
        "the Prometheus port counting every prediction")


def test_replicas_are_listed_once(conn):
    assert conn.get_all_model_replicas() == ["sizes:1:0"]
    conn.set_num_replicas("sizes", 2)
    try:
        assert sorted(conn.get_all_model_replicas()) == ["sizes:1:0", "sizes:1:1"]
    finally:
        conn.set_num_replicas("sizes", 1)


def test_a_change_once_answered_is_served_by_every_worker(conn):
    python_deployer.create_endpoint(conn, "flip", "doubles", lambda xs: ["1" for _ in xs],
                                    slo_micros=5_000_000)
    python_deployer.deploy_python_closure(conn, "flip", 2, "doubles", lambda xs: ["2" for _ in xs])
    # Kept-alive connections, each to the worker the kernel gave it: a query right after a
    # change, on a connection already open, is the quickest to reach a worker.
    sessions = [requests.Session() for _ in range(6)]
    url = f"http://{conn.get_query_addr()}/flip/predict"
    try:
        stale = []
        for flip in range(300):
            wanted = 1 + flip % 2
            conn.set_model_version("flip", wanted)
            answer = sessions[flip % len(sessions)].post(url, json={"input": [float(flip)]}, timeout=10).json()
            if answer["output"] != wanted:
                stale.append((flip, answer))
        assert stale == []
    finally:
        conn.stop_models(["flip"])


def test_a_killed_worker_is_restarted_and_predictions_keep_being_answered(conn):
    victim = pids(conn)["query-frontend-1"]
    os.kill(victim, signal.SIGKILL)
    # Connections the dying worker had taken are reset (see the README): a client retries.
    answers = predict_on_new_connections(conn, 300, first=10_000, clients=8, retry_reset=True)
    assert not [a for a in answers if a["default"]], "the model answered every query meanwhile"
    wait_for(lambda: pids(conn).get("query-frontend-1") not in (None, victim), 15, "the worker restarted")
    # The restarted worker served once the replica had registered with it: no default output.
    answers = predict_on_new_connections(conn, 300, first=20_000)
    assert not [a for a in answers if a["default"]]
    before = worker_counts(conn)[1]
    predict_on_new_connections(conn, 100, first=30_000)
    wait_for(lambda: worker_counts(conn)[1] > before, 10, "the restarted worker answering")


def test_a_killed_supervisor_adopts_every_worker_and_recover_restarts_them(conn):
    cluster = conn.cm.cluster
    first, workers = cluster.supervisor(), {n: p for n, p in pids(conn).items() if "query" in n}
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: cluster.is_running() and cluster.supervisor() != first, 10, "a new supervisor")
    wait_for(lambda: {n: p for n, p in pids(conn).items() if "query" in n} == workers, 10,
             "the running workers adopted")
    # Every process killed at once (a power cut): connect() starts the cluster again, N workers.
    processes = cluster_processes(cluster)
    for stop in (signal.SIGSTOP, signal.SIGKILL):
        for process in processes:
            process.send_signal(stop)
    wait_for(lambda: all_gone(p.pid for p in processes), 10, "every process gone")
    again = ClipperConnection(LocalContainerManager(cluster_name="workers"))
    again.connect()
    assert again.cm.query_workers == WORKERS
    assert {"query-frontend", "query-frontend-1"} <= set(pids(again))
    # Replicas may still be connecting, as after any recovery; then both workers answer.
    wait_for(lambda: not [a for a in predict_on_new_connections(again, 100, first=40_000)
                          if a["default"]], 30, "the recovered workers answering with the model", interval=0.1)


def test_stop_all_leaves_no_process(conn, clipper_state_dir):
    conn.stop_all()
    assert not processes_under(clipper_state_dir / "workers")


@pytest.mark.parametrize("workers", [{"query_workers": 2}, {"num_frontend_replicas": 2}])
def test_the_rpc_port_of_every_worker_must_be_free(clipper_state_dir, workers):
    """Clipper's start_clipper(num_frontend_replicas=N) asks for N workers too."""
    manager_workers = {"query_workers": workers.get("query_workers", 1)}
    start_workers = {"num_frontend_replicas": workers.get("num_frontend_replicas", 1)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 7011))
        taken.listen()
        manager = LocalContainerManager(cluster_name="taken", clipper_query_port=1347,
                                        clipper_management_port=1348, clipper_rpc_port=7010,
                                        clipper_metric_port=1400, **manager_workers)
        with pytest.raises(ClipperException, match="Port 7011"):
            ClipperConnection(manager).start_clipper(**start_workers)
    assert not processes_under(clipper_state_dir / "taken")


def test_num_frontend_replicas_must_agree_with_query_workers(clipper_state_dir):
    conn = ClipperConnection(LocalContainerManager(cluster_name="disagree", query_workers=3))
    with pytest.raises(ClipperException, match="contradicts"):
        conn.start_clipper(num_frontend_replicas=2)
    with pytest.raises(ClipperException, match="whole number"):
        ClipperConnection(LocalContainerManager(cluster_name="disagree")).start_clipper(num_frontend_replicas=0)
    # A slip of the keyboard must not start a process per worker asked until the machine runs out.
    with pytest.raises(ClipperException, match="num_frontend_replicas must be at most 256"):
        ClipperConnection(LocalContainerManager(cluster_name="disagree")).start_clipper(num_frontend_replicas=10 ** 6)
    with pytest.raises(ClipperException, match="query_workers must be at most 256"):
        LocalContainerManager(cluster_name="disagree", query_workers=257)
    assert not processes_under(clipper_state_dir / "disagree")


def test_only_the_local_backend_runs_several_workers(capsys):
    assert cli.main(["start", "--backend", "docker", "--query-workers", "2"]) == 1
    assert "only the local backend" in capsys.readouterr().err
    with pytest.raises(ClipperException, match="query_workers"):
        LocalContainerManager(query_workers=0)
