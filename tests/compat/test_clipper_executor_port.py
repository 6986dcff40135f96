"""Clipper 0.4.1's own checks of its task executor, metrics and RPC, ported to our cluster and
observed from outside: over REST, on the metrics port, and from the container's side of RPC.

Sources of the checks (Clipper, v0.4.1; paths in ucbrise/clipper):
- src/libclipper/test/task_executor_test.cpp: model queue order (equal deadlines, earliest
  deadline first), expired queries never sent, the prediction cache (an in-flight query completed
  by the answer, entries larger than the cache never kept, a bounded cache evicts);
- src/libclipper/test/container_test.cpp: replicas of several models, of one version, of two
  versions; batch sizes that grow while the latency allows (our AIMD, README "Batching");
- src/libclipper/test/metrics_test.cpp: counters, ratio counters (nan at 0/0), meters,
  histogram statistics and percentiles, the report's format;
- src/libclipper/src/rpc_service.cpp (what rpc_protocol_test.cpp and Clipper's RPC test
  container check of it): heartbeat replies, RPC versions and request frames.
  (rpc_service_test.cpp only checks that an RPCService object refuses to send before it is
  started, an internal API with no counterpart outside.)

What Clipper's checks assert about internals is asserted here through what a user or a Clipper
component sees: which inputs reach a container and in what batches (a Clipper-style container
written from the protocol, tests/compat/clipper_rpc.py), the answers, GET /metrics and the
Prometheus port.

Where we differ from Clipper on purpose (README and docs/protocol.md "Where we differ": no padded
batches, AIMD, LRU cache that also keeps request bodies, in-flight sharing, faster liveness,
replicas that leave hand their batch on), the checks assert our documented behaviour instead.
"""
import concurrent.futures
import json
import math
import queue
import struct
import threading
import time

import pytest
import requests
import zmq

import clipper_rpc as rpc
from helpers import local_cluster, wait_for

PORTS = dict(query_port=28337, management_port=28338, rpc_port=28700, metric_port=28390)
SMALL_CACHE_PORTS = dict(query_port=28537, management_port=28538, rpc_port=28900, metric_port=28590)
SMALL_CACHE_BYTES = 4096

LONG_SLO = 20_000_000          # micros: long enough that only the test decides when a batch ends

SLO_MISSED = "Failed to retrieve a prediction response within the specified latency SLO"
NO_CONNECTED_MODELS = "No connected models found for query"


# ---------------------------------------------------------------------------------------------
# A Clipper-style container whose batches the test answers when it chooses
# ---------------------------------------------------------------------------------------------
def doubles(raw):
    return list(struct.unpack("<%dd" % (len(raw) // 8), raw))


class Peer(threading.Thread):
    """A model container speaking RPC v3 frame for frame as Clipper's do (clipper_rpc.py):
    heartbeats, registers when asked, records every batch. With ``hold``, a batch is answered
    only when the test calls ``release()``; ``output(raw input) -> str`` makes each output."""

    def __init__(self, rpc_port, name, version="1", input_type="doubles", hold=False,
                 output=lambda raw: repr(sum(doubles(raw))), registration=None):
        super().__init__(daemon=True)
        self.address = f"tcp://127.0.0.1:{rpc_port}"
        self.registration = registration or rpc.new_container(name, version, input_type)
        self.hold = hold
        self.output = output
        self.received = []           # every message from the frontend, parsed, in order
        self.batches = []            # the prediction requests among them
        self.error = None
        self._held = []
        self._commands = queue.Queue()
        self._stopping = threading.Event()

    # -- called by the test --
    def release(self, hold=None):
        """Answer every batch held so far; then keep holding, or not (``hold``)."""
        self._call("release", hold)

    def send(self, frames):
        self._call("send", frames)

    def stop(self):
        self._stopping.set()
        self.join(10)
        assert not self.is_alive(), "the peer's thread did not stop"

    def wait_batches(self, count, timeout=10):
        wait_for(lambda: len(self.batches) >= count or self.error, timeout,
                 f"{count} batches reaching the container (it has {len(self.batches)})")
        assert self.error is None, repr(self.error)
        return self.batches

    def batch_inputs(self, index):
        return [doubles(raw) for raw in self.batches[index]["inputs"]]

    def _call(self, command, argument):
        done = threading.Event()
        self._commands.put((command, argument, done))
        assert done.wait(10), f"the peer did not carry out {command}"
        assert self.error is None, repr(self.error)

    # -- the container's thread --
    def run(self):
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.address)
        try:
            socket.send_multipart(rpc.heartbeat())
            last_heartbeat = time.monotonic()
            while not self._stopping.is_set():
                self._run_commands(socket)
                if socket.poll(10):
                    message = rpc.parse_from_clipper(socket.recv_multipart())
                    self.received.append(message)
                    if message["type"] == "heartbeat_reply":
                        if message["heartbeat_type"] == rpc.REQUEST_CONTAINER_METADATA:
                            socket.send_multipart(self.registration)
                    else:
                        self.batches.append(message)
                        if self.hold:
                            self._held.append(message)
                        else:
                            self._answer(socket, message)
                if time.monotonic() - last_heartbeat > 1.0:
                    socket.send_multipart(rpc.heartbeat())
                    last_heartbeat = time.monotonic()
        except Exception as error:          # noqa: BLE001 - reported to the test
            self.error = error
        finally:
            socket.close(0)
            while not self._commands.empty():           # nobody waits in vain
                self._commands.get()[2].set()

    def _answer(self, socket, message):
        outputs = [self.output(raw).encode() for raw in message["inputs"]]
        socket.send_multipart(rpc.prediction_response(message["msg_id"], outputs))

    def _run_commands(self, socket):
        while not self._commands.empty():
            command, argument, done = self._commands.get()
            if command == "release":
                held, self._held = self._held, []
                for message in held:
                    self._answer(socket, message)
                if argument is not None:
                    self.hold = argument
            elif command == "send":
                socket.send_multipart(argument)
            done.set()


# ---------------------------------------------------------------------------------------------
# Cluster, applications, metrics
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="executor-port", **PORTS) as conn:
        yield conn


@pytest.fixture
def peers():
    """start(conn, name, version="1", **peer options): a Peer, once it is listed as a replica."""
    started = []

    def start(conn, name, version="1", **options):
        before = set(conn.get_all_model_replicas())
        peer = Peer(int(conn.cm.clipper_rpc_port), name, version, **options)
        peer.start()
        started.append(peer)
        prefix = f"{name}:{version}:"

        def listed():
            assert peer.error is None, repr(peer.error)
            return [r for r in set(conn.get_all_model_replicas()) - before if r.startswith(prefix)]
        wait_for(listed, 15, f"a replica of {name}:{version} registering")
        peer.replica = listed()[0]
        return peer

    yield start
    for peer in started:
        peer.stop()
        assert peer.error is None, f"a peer failed: {peer.error!r}"


def app_and_model(conn, name, slo=LONG_SLO, batch_size=-1, default_output="default", version="1"):
    """An application ``name`` linked to a containerless model ``name`` (version ``version``)."""
    conn.register_application(name, "doubles", default_output, slo)
    conn.register_model(name, version, "doubles", batch_size=batch_size)
    conn.link_model_to_app(name, name)


def query_url(conn, app):
    return f"http://{conn.get_query_addr()}/{app}/predict"


_pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)


def post_later(conn, app, payload, timeout=60):
    """Send a prediction from another thread; the future of its response."""
    return _pool.submit(requests.post, query_url(conn, app), json=payload, timeout=timeout)


def post(conn, app, payload, timeout=60):
    response = requests.post(query_url(conn, app), json=payload, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


def metrics(conn):
    """GET /metrics: (the document as parsed, {metric name: its fields})."""
    response = requests.get(f"http://{conn.get_query_addr()}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    document = response.json()
    flat = {}
    for entries in document.values():
        for entry in entries:
            (name, fields), = entry.items()
            flat[name] = fields
    return document, flat


def metric(conn, name):
    return metrics(conn)[1][name]


def count(conn, name):
    return int(metric(conn, name)["count"])


def until_queued(conn, scheduled_before, more):
    """Wait until the frontend has taken ``more`` new queries for scheduling (distinct inputs:
    each one becomes one task, counted by internal:aggregate_num_predictions in Clipper and here)."""
    wait_for(lambda: count(conn, "internal:aggregate_num_predictions") >= scheduled_before + more,
             10, f"{more} queries queued")
    time.sleep(0.05)


def clipper_percentile(values, rank):
    """Histogram::percentile of Clipper's src/libclipper/src/metrics.cpp, line for line."""
    snapshot = sorted(values)
    n = len(snapshot)
    x_condition = 1.0 / (n + 1)
    if rank <= x_condition:
        x = 1.0
    elif rank < n * x_condition:
        x = rank * (n + 1)
    else:
        x = float(n)
    index = math.floor(x) - 1
    remainder = x - math.floor(x)
    if remainder == 0:
        return float(snapshot[index])
    return snapshot[index] + remainder * (snapshot[index + 1] - snapshot[index])


# ---------------------------------------------------------------------------------------------
# task_executor_test.cpp: ModelQueueTests, via the batches a container receives
# ---------------------------------------------------------------------------------------------
def test_queries_with_equal_deadlines_are_batched_in_arrival_order(cluster, peers):
    """ModelQueueTests.TestGetBatchQueueNotEmpty: three tasks of one latency objective, queued in
    order a, b, c, make the batch [a, b, c] (batch size 3)."""
    app_and_model(cluster, "eq-deadlines", batch_size=3)
    peer = peers(cluster, "eq-deadlines", hold=True)
    before = count(cluster, "internal:aggregate_num_predictions")
    filler = post_later(cluster, "eq-deadlines", {"input": [100.0]})
    peer.wait_batches(1)
    answer = post_later(cluster, "eq-deadlines", {"input_batch": [[1.0], [2.0], [3.0]]})
    until_queued(cluster, before, 4)
    peer.release(hold=False)
    peer.wait_batches(2)
    assert peer.batch_inputs(1) == [[1.0], [2.0], [3.0]]
    assert filler.result().json()["output"] == 100.0
    assert [p["output"] for p in answer.result().json()["batch_predictions"]] == [1.0, 2.0, 3.0]


def test_queued_queries_are_batched_earliest_deadline_first(cluster, peers):
    """ModelQueueTests.TestGetBatchOrdersByEarliestDeadline: tasks a (objective 20 s), b (10 s),
    c (30 s), queued in that order, make the batch [b, a, c]. Three applications with those
    objectives share one model."""
    conn = cluster
    conn.register_model("edf", "1", "doubles", batch_size=3)
    for app, slo in (("edf-a", 20_000_000), ("edf-b", 10_000_000), ("edf-c", 30_000_000)):
        conn.register_application(app, "doubles", "default", slo)
        conn.link_model_to_app(app, "edf")
    peer = peers(conn, "edf", hold=True)
    before = count(conn, "internal:aggregate_num_predictions")
    filler = post_later(conn, "edf-a", {"input": [100.0]})
    peer.wait_batches(1)
    answers = []
    for n, app in enumerate(("edf-a", "edf-b", "edf-c"), start=1):
        answers.append(post_later(conn, app, {"input": [float(n)]}))
        until_queued(conn, before, 1 + n)          # queued one after the other: a, b, c
    peer.release(hold=False)
    peer.wait_batches(2)
    assert peer.batch_inputs(1) == [[2.0], [1.0], [3.0]]      # b, a, c
    assert filler.result().json()["default"] is False
    assert [a.result().json()["output"] for a in answers] == [1.0, 2.0, 3.0]


def test_queries_whose_deadline_passed_in_the_queue_are_never_sent(cluster, peers):
    """ModelQueueTests.TestGetBatchRemovesTasksWithElapsedDeadline: of tasks a, b (deadline
    passed) and c, the batch is [c]. a and b get the default output when their objective passes,
    with Clipper's explanation."""
    conn = cluster
    conn.register_model("expiry", "1", "doubles", batch_size=3)
    conn.register_application("expiry-fast", "doubles", "fast-default", 300_000)
    conn.register_application("expiry-slow", "doubles", "slow-default", LONG_SLO)
    for app in ("expiry-fast", "expiry-slow"):
        conn.link_model_to_app(app, "expiry")
    peer = peers(conn, "expiry", hold=True)
    before = count(conn, "internal:aggregate_num_predictions")
    filler = post_later(conn, "expiry-slow", {"input": [100.0]})
    peer.wait_batches(1)
    sent = time.monotonic()
    expired = [post_later(conn, "expiry-fast", {"input": [float(n)]}) for n in (1, 2)]
    kept = post_later(conn, "expiry-slow", {"input": [3.0]})
    until_queued(conn, before, 4)
    for answer in expired:
        body = answer.result().json()
        assert body["default"] is True and body["output"] == "fast-default", body
        assert body["default_explanation"] == SLO_MISSED
    assert time.monotonic() - sent < 3, "the default came long after the 300 ms objective"
    time.sleep(0.1)
    peer.release(hold=False)
    peer.wait_batches(2)
    time.sleep(0.3)
    assert [peer.batch_inputs(i) for i in range(1, len(peer.batches))] == [[[3.0]]]
    assert kept.result().json()["output"] == 3.0 and filler.result().json()["output"] == 100.0


def test_a_registered_batch_size_caps_every_batch(cluster, peers):
    """task_executor.hpp ModelQueue::get_batch takes at most the container's batch size, which is
    the model's registered batch_size when it is not -1 (containers.cpp get_batch_size). A
    backlog of 8 behind a busy replica goes out as 3, 3, 2."""
    app_and_model(cluster, "capped", batch_size=3)
    peer = peers(cluster, "capped", hold=True)
    before = count(cluster, "internal:aggregate_num_predictions")
    first = post_later(cluster, "capped", {"input": [0.5]})
    peer.wait_batches(1)
    backlog = post_later(cluster, "capped", {"input_batch": [[float(n)] for n in range(1, 9)]})
    until_queued(cluster, before, 9)
    peer.release(hold=False)
    peer.wait_batches(4)
    assert [len(b["inputs"]) for b in peer.batches] == [1, 3, 3, 2]
    assert [p["output"] for p in backlog.result().json()["batch_predictions"]] == [float(n) for n in range(1, 9)]
    assert first.result().json()["output"] == 0.5


def test_adaptive_batches_grow_while_a_backlog_is_answered_in_time(cluster, peers):
    """ModelContainerTests.BatchSizeDeterminationExploitsAdvantageousBatchSizeLatencyRelationship:
    with batch_size -1 and replies well within the objective, batch sizes keep growing while a
    backlog lasts (Clipper explores +1 per step; ours is AIMD +1 per full, timely batch: README,
    "Batching"). Never padded with copies (ours, documented): each input reaches the model once."""
    app_and_model(cluster, "growing")
    peer = peers(cluster, "growing", hold=True)
    before = count(cluster, "internal:aggregate_num_predictions")
    first = post_later(cluster, "growing", {"input": [0.0]})
    peer.wait_batches(1)
    backlog = post_later(cluster, "growing", {"input_batch": [[float(n)] for n in range(1, 40)]})
    until_queued(cluster, before, 40)
    sizes = []
    while sum(sizes) < 40:
        peer.wait_batches(len(sizes) + 1)
        sizes.append(len(peer.batches[len(sizes)]["inputs"]))
        peer.release()
    assert sizes[:5] == sorted(sizes[:5]) and sizes[4] > sizes[0], sizes
    inputs = [v for i in range(len(peer.batches)) for row in peer.batch_inputs(i) for v in row]
    assert sorted(inputs) == [float(n) for n in range(40)], "an input was sent twice or never"
    assert first.result().json()["default"] is False
    assert all(not p["default"] for p in backlog.result().json()["batch_predictions"])


# ---------------------------------------------------------------------------------------------
# Deadlines and the default output
# ---------------------------------------------------------------------------------------------
def test_a_query_gets_the_default_when_its_objective_passes_and_the_late_output_is_kept(cluster, peers):
    """query_processor.cpp: the default output with Clipper's explanation when no output arrived
    within latency_slo_micros; task_executor.hpp on_response_recv puts every output it receives in
    the prediction cache, late or not, so the same input then hits the cache."""
    app_and_model(cluster, "late", slo=400_000, default_output="0.25")
    peer = peers(cluster, "late", hold=True)
    started = time.monotonic()
    body = post(cluster, "late", {"input": [4.0, 2.0]})
    took = time.monotonic() - started
    assert body["default"] is True and body["output"] == 0.25
    assert body["default_explanation"] == SLO_MISSED
    assert 0.35 < took < 2.0, f"answered after {took:.2f} s for a 0.4 s objective"
    peer.release(hold=False)
    time.sleep(0.3)
    assert post(cluster, "late", {"input": [4.0, 2.0]}) == {
        "query_id": body["query_id"] + 1, "output": 6.0, "default": False}
    assert len(peer.batches) == 1, "the late output was not kept: the same input was computed again"


def test_without_a_connected_replica_the_default_comes_at_once(cluster):
    """query_processor.cpp: no task could be scheduled (no replica of the version connected):
    the default, immediately, explained "No connected models found for query"."""
    app_and_model(cluster, "no-replica", slo=5_000_000, default_output="none here")
    started = time.monotonic()
    body = post(cluster, "no-replica", {"input": [1.0]})
    assert time.monotonic() - started < 1.0
    assert body["default"] is True and body["output"] == "none here"
    assert body["default_explanation"] == NO_CONNECTED_MODELS


# ---------------------------------------------------------------------------------------------
# container_test.cpp: ActiveContainerTests, and replicas joining and leaving
# ---------------------------------------------------------------------------------------------
def test_replicas_of_different_models_are_kept_apart(cluster, peers):
    """ActiveContainerTests.AddMultipleContainersDifferentModels: model m and model j each have
    replica 0, and each answers its own application's queries."""
    app_and_model(cluster, "m-model")
    app_and_model(cluster, "j-model")
    m = peers(cluster, "m-model", output=lambda raw: '"m"')
    j = peers(cluster, "j-model", output=lambda raw: '"j"')
    assert (m.replica, j.replica) == ("m-model:1:0", "j-model:1:0")
    assert post(cluster, "m-model", {"input": [1.0]})["output"] == "m"
    assert post(cluster, "j-model", {"input": [1.0]})["output"] == "j"
    assert (len(m.batches), len(j.batches)) == (1, 1)


def test_replicas_of_one_version_get_their_own_ids_and_share_the_queue(cluster, peers):
    """ActiveContainerTests.AddMultipleContainersSameModelSameVersion: two replicas of m:1 get
    replica ids 0 and 1 (rpc_service.cpp: a counter per model version); while one holds a
    batch, the next query goes to the other (each replica pulls from the version's queue)."""
    app_and_model(cluster, "pair")
    first = peers(cluster, "pair", hold=True)
    second = peers(cluster, "pair", hold=True)
    assert sorted([first.replica, second.replica]) == ["pair:1:0", "pair:1:1"]
    answers = [post_later(cluster, "pair", {"input": [float(n)]}) for n in (1, 2)]
    first.wait_batches(1)
    second.wait_batches(1)
    first.release(hold=False)
    second.release(hold=False)
    assert sorted(a.result().json()["output"] for a in answers) == [1.0, 2.0]
    info = cluster.get_model_replica_info("pair", "1", 1)
    assert info == {"model_id": "pair:1", "model_name": "pair", "model_version": "1",
                    "model_replica_id": 1, "input_type": "doubles"}


def test_replicas_of_two_versions_serve_their_own_version(cluster, peers):
    """ActiveContainerTests.AddMultipleContainersSameModelDifferentVersions: replicas of m:1 and
    m:2 are kept apart: queries go to the current version, and to version 1 when asked for."""
    conn = cluster
    app_and_model(conn, "versions", version="1")
    v1 = peers(conn, "versions", "1", output=lambda raw: '"v1"')
    conn.register_model("versions", "2", "doubles")          # becomes current
    v2 = peers(conn, "versions", "2", output=lambda raw: '"v2"')
    assert (v1.replica, v2.replica) == ("versions:1:0", "versions:2:0")
    assert post(conn, "versions", {"input": [1.0]})["output"] == "v2"
    assert post(conn, "versions", {"input": [2.0], "version": "1"})["output"] == "v1"
    assert (len(v1.batches), len(v2.batches)) == (1, 1)


def test_a_replica_that_joins_takes_the_waiting_queries_at_once(cluster, peers):
    """task_executor.hpp: a newly registered container is made ready at once (on_container_ready),
    so it pulls what waits in its version's queue while the other replica is busy."""
    app_and_model(cluster, "joiner")
    busy = peers(cluster, "joiner", hold=True)
    before = count(cluster, "internal:aggregate_num_predictions")
    held = post_later(cluster, "joiner", {"input": [1.0]})
    busy.wait_batches(1)
    waiting = post_later(cluster, "joiner", {"input": [2.0]})
    until_queued(cluster, before, 2)
    newcomer = peers(cluster, "joiner")
    body = waiting.result(timeout=10).json()
    assert body["output"] == 2.0 and body["default"] is False
    assert newcomer.batch_inputs(0) == [[2.0]]
    busy.release(hold=False)
    assert held.result().json()["output"] == 1.0


def test_replica_ids_are_not_reused_while_the_version_has_replicas(cluster, peers):
    """rpc_service.cpp numbers replicas with replica_ids_[model], never decremented: with
    replicas 0 and 1 connected, 0 leaving and another joining makes replica 2 (we restart the
    numbering only when every replica of the version left: docs/protocol.md 9.15)."""
    app_and_model(cluster, "ids")
    zero = peers(cluster, "ids")
    one = peers(cluster, "ids")
    assert sorted([zero.replica, one.replica]) == ["ids:1:0", "ids:1:1"]
    leaving = zero if zero.replica == "ids:1:0" else one
    leaving.stop()
    wait_for(lambda: "ids:1:0" not in cluster.get_all_model_replicas(), 40, "replica 0 unlisted")
    assert peers(cluster, "ids").replica == "ids:1:2"
    assert set(cluster.get_all_model_replicas()) >= {"ids:1:1", "ids:1:2"}


def test_a_replica_that_leaves_is_unlisted_and_its_version_answers_the_default_at_once(cluster, peers):
    """rpc_service.cpp drops a silent container (30 s, checked every 10 s; ours at once when its
    connection closes, README "Liveness"); the version then has no active replica, so a query
    gets the default at once (task_executor.hpp schedule_predictions, query_processor.cpp)."""
    app_and_model(cluster, "leaver", slo=5_000_000)
    peer = peers(cluster, "leaver")
    assert post(cluster, "leaver", {"input": [1.5]})["output"] == 1.5
    peer.stop()
    wait_for(lambda: "leaver:1:0" not in cluster.get_all_model_replicas(), 40, "the replica unlisted")
    started = time.monotonic()
    body = post(cluster, "leaver", {"input": [2.5]})
    assert time.monotonic() - started < 1.0
    assert body["default"] is True and body["default_explanation"] == NO_CONNECTED_MODELS


def test_a_replica_that_leaves_mid_batch_loses_no_query(cluster, peers):
    """Clipper lost a dead replica's batch in flight (its queries waited for the default); ours
    hands it to another replica of the version (docs/protocol.md 9.6): the query is answered by
    the model within its objective, not dropped and not left hanging."""
    app_and_model(cluster, "handover", slo=10_000_000)
    leaving = peers(cluster, "handover", hold=True)
    staying = peers(cluster, "handover", hold=True)
    answer = post_later(cluster, "handover", {"input": [7.0]})
    wait_for(lambda: leaving.batches or staying.batches, 10, "the batch sent")
    if staying.batches:
        leaving, staying = staying, leaving
    staying.release(hold=False)
    leaving.stop()
    body = answer.result(timeout=15).json()
    assert body["default"] is False and body["output"] == 7.0
    assert staying.batch_inputs(0) == [[7.0]]


def test_a_batch_size_registered_after_the_replica_connected_still_applies(cluster, peers):
    """clipper_admin's deploy_model starts the containers before it registers the model
    (pitfall 30): task_executor.hpp's model hset handler then registers the batch size and
    pushes it to the replicas already connected (register_batch_size), so it caps their
    batches."""
    conn = cluster
    conn.register_application("late-model", "doubles", "default", LONG_SLO)
    peer = peers(conn, "late-model", hold=True)            # connected before its model exists
    conn.register_model("late-model", "1", "doubles", batch_size=2)
    conn.link_model_to_app("late-model", "late-model")
    before = count(conn, "internal:aggregate_num_predictions")
    first = post_later(conn, "late-model", {"input": [1.0]})
    peer.wait_batches(1)
    rest = post_later(conn, "late-model", {"input_batch": [[2.0], [3.0], [4.0], [5.0]]})
    until_queued(conn, before, 5)
    peer.release(hold=False)
    peer.wait_batches(3)
    assert [len(b["inputs"]) for b in peer.batches] == [1, 2, 2]
    assert first.result().json()["output"] == 1.0
    assert [p["output"] for p in rest.result().json()["batch_predictions"]] == [2.0, 3.0, 4.0, 5.0]


def test_deleting_a_version_unlists_its_replicas(cluster, peers):
    """task_executor.hpp, the model hdel handler (delete_versioned_model): for every container of
    the deleted version, clean_up_specific_container deletes its DB 3 record
    (redis::delete_container) and removes it from the active containers, so
    get_all_model_replicas no longer lists it, whether or not its process still runs (a
    container clipper_admin did not start, e.g. one of Clipper's, is not stopped by
    stop_models). clipper_admin's stop_models / stop_versioned_models wait for exactly this."""
    app_and_model(cluster, "deleted")
    peer = peers(cluster, "deleted")
    assert post(cluster, "deleted", {"input": [1.0]})["output"] == 1.0
    response = requests.post(f"http://{cluster.cm.get_admin_addr()}/admin/delete_versioned_model",
                             json={"model_name": "deleted", "model_version": "1"}, timeout=10)
    assert response.status_code == 200, response.text
    body = post(cluster, "deleted", {"input": [2.0]})
    assert body["default"] is True and body["default_explanation"] == NO_CONNECTED_MODELS
    assert not [k for k in metrics(cluster)[1] if k.startswith("model:deleted:1:")]
    assert len(peer.batches) == 1
    time.sleep(1.0)
    assert not [r for r in cluster.get_all_model_replicas() if r.startswith("deleted:1:")], \
        "a replica of a deleted version is still listed"


# ---------------------------------------------------------------------------------------------
# task_executor_test.cpp: PredictionCacheTests, observed through the container's batches
# ---------------------------------------------------------------------------------------------
def test_an_identical_query_in_flight_is_completed_by_the_first_ones_output(cluster, peers):
    """PredictionCacheTests.TestIncompleteFuturesAreCompletedOnPut (cache1): a lookup made while
    the output is being computed is completed when it arrives, and later lookups hit. (Clipper
    sent the second query to the container too; ours shares the evaluation: README "Cache".)"""
    app_and_model(cluster, "inflight")
    peer = peers(cluster, "inflight", hold=True)
    first = post_later(cluster, "inflight", {"input": [10.0]})
    peer.wait_batches(1)
    second = post_later(cluster, "inflight", {"input": [10.0]})
    time.sleep(0.2)
    peer.release(hold=False)
    assert first.result().json()["output"] == 10.0 and first.result().json()["default"] is False
    assert second.result().json()["output"] == 10.0 and second.result().json()["default"] is False
    batches = len(peer.batches)
    for _ in range(5):
        assert post(cluster, "inflight", {"input": [10.0]})["output"] == 10.0
    assert len(peer.batches) == batches, "a cached output was computed again"


@pytest.fixture(scope="module")
def small_cache_cluster(cluster):
    """A cluster whose prediction cache holds SMALL_CACHE_BYTES (started after ``cluster``,
    whose tests come first, so that at most two clusters run at once)."""
    with local_cluster(name="executor-port-cache", **SMALL_CACHE_PORTS,
                       cache_size=SMALL_CACHE_BYTES) as conn:
        yield conn


def test_an_output_larger_than_the_cache_is_never_kept_but_completes_its_waiters(small_cache_cluster, peers):
    """PredictionCacheTests.TestEntryLargerThanCacheSizeIsEvicted and
    TestIncompleteFuturesAreCompletedOnPut (cache2): an output larger than the whole cache still
    answers the queries waiting for it, and is never served from the cache afterwards."""
    conn = small_cache_cluster
    big = '"' + "x" * (2 * SMALL_CACHE_BYTES) + '"'
    app_and_model(conn, "too-big")
    peer = peers(conn, "too-big", hold=True, output=lambda raw: big)
    waiting = [post_later(conn, "too-big", {"input": [1.0]}) for _ in range(2)]
    peer.wait_batches(1)
    time.sleep(0.2)
    peer.release(hold=False)
    for answer in waiting:
        assert answer.result().json()["output"] == json.loads(big)
    computed = len(peer.batches)
    for n in range(3):
        assert post(conn, "too-big", {"input": [1.0]})["output"] == json.loads(big)
        assert len(peer.batches) == computed + n + 1, "an output larger than the cache was kept"


def test_a_bounded_cache_evicts_the_oldest_outputs_and_keeps_the_newest(small_cache_cluster, peers):
    """PredictionCacheTests.TestOutputDataSizeDoesNotIncreaseBeyondMaximumCacheSize: once more
    outputs were put than the cache holds, the first is gone (computed again) and the latest is
    still there. (Clipper's CLOCK order over output bytes is not ours: LRU over inputs, outputs
    and a per-entry overhead, README "Cache"; only what both promise is checked.)"""
    conn = small_cache_cluster
    app_and_model(conn, "bounded")
    peer = peers(conn, "bounded")
    for n in range(40):                      # 40 distinct entries of some 400 bytes each
        assert post(conn, "bounded", {"input": [float(n)]})["output"] == float(n)
    assert len(peer.batches) == 40
    assert post(conn, "bounded", {"input": [39.0]})["output"] == 39.0
    assert len(peer.batches) == 40, "the newest output was not kept"
    assert post(conn, "bounded", {"input": [0.0]})["output"] == 0.0
    assert len(peer.batches) == 41, "the cache kept more than it holds"


# ---------------------------------------------------------------------------------------------
# metrics_test.cpp, through GET /metrics and the Prometheus port
# ---------------------------------------------------------------------------------------------
def test_the_metrics_report_has_clippers_format(cluster, peers):
    """MetricsTests.MetricsRegistryReportingFormatCorrectness and metrics.cpp report_metrics:
    categories in the order counters, ratio_counters, meters, histograms, each a list of
    single-key objects, every leaf a string (property_tree), pretty-printed; each kind with its
    fields. Reading it clears nothing (GET /metrics reports without clear)."""
    app_and_model(cluster, "format")
    peers(cluster, "format")
    post(cluster, "format", {"input_batch": [[1.0], [2.0]]})
    response = requests.get(f"http://{cluster.get_query_addr()}/metrics", timeout=10)
    assert response.status_code == 200 and "\n" in response.text.strip()
    document = response.json()
    assert list(document) == ["counters", "ratio_counters", "meters", "histograms"]
    fields = {"counters": ["count"], "ratio_counters": ["ratio"],
              "meters": ["unit", "rate", "rate_1min", "rate_5min", "rate_15min"],
              "histograms": ["unit", "size", "min", "max", "mean", "std_dev", "p50", "p95", "p99"]}
    for category, entries in document.items():
        for entry in entries:
            assert isinstance(entry, dict) and len(entry) == 1, entry
            (name, leaves), = entry.items()
            assert sorted(leaves) == sorted(fields[category]), (name, leaves)
            assert all(isinstance(v, str) for v in leaves.values()), (name, leaves)
    flat = metrics(cluster)[1]
    for name, kind in (("internal:aggregate_num_predictions", "counters"),
                       ("internal:aggregate_model_throughput", "meters"),
                       ("internal:prediction_cache_lookups", "counters"),
                       ("internal:prediction_cache_hit_ratio", "ratio_counters"),
                       ("internal:rpc_request_queueing_delay", "histograms"),
                       ("app:format:prediction_latency", "histograms"),
                       ("app:format:prediction_throughput", "meters"),
                       ("app:format:num_predictions", "counters"),
                       ("app:format:default_prediction_ratio", "ratio_counters"),
                       ("model:format:1:prediction_latency", "histograms"),
                       ("model:format:1:prediction_throughput", "meters"),
                       ("model:format:1:num_predictions", "counters"),
                       ("model:format:1:cache_hit_ratio", "ratio_counters"),
                       ("model:format:1:batch_size", "histograms")):
        assert name in flat, f"{name} is not reported"
        assert sorted(flat[name]) == sorted(fields[kind]), name
    assert flat["app:format:prediction_latency"]["unit"] == "microseconds"
    assert flat["model:format:1:batch_size"]["unit"] == "queries"
    assert flat["app:format:prediction_throughput"]["unit"] == "events per second"
    assert count(cluster, "app:format:num_predictions") == 2     # read twice: not cleared


def test_counters_and_ratios_count_each_prediction(cluster, peers):
    """MetricsTests.CounterCorrectness and RatioCounterCorrectness (nan while the denominator is
    0; then numerator / denominator), on the application's and the model's metrics
    (query_frontend.hpp: one increment per prediction of a batch; task_executor.hpp: one per
    output a container returns)."""
    app_and_model(cluster, "counting", default_output="-1")
    assert metric(cluster, "app:counting:default_prediction_ratio")["ratio"].lower() == "nan"
    assert count(cluster, "app:counting:num_predictions") == 0
    post(cluster, "counting", {"input": [1.0]})       # no replica yet: the default
    peers(cluster, "counting")
    post(cluster, "counting", {"input_batch": [[2.0], [3.0]]})
    assert count(cluster, "app:counting:num_predictions") == 3
    assert abs(float(metric(cluster, "app:counting:default_prediction_ratio")["ratio"]) - 1 / 3) < 0.01
    assert count(cluster, "model:counting:1:num_predictions") == 2
    assert float(metric(cluster, "model:counting:1:cache_hit_ratio")["ratio"]) == 0


def test_meters_report_the_rate_since_creation(cluster, peers):
    """MetricsTests.MeterCorrectness and EWMACorrectness: rate = events / seconds since the meter
    was created; the moving averages read -1 until their first 5 s tick, then a rate."""
    before_creation = time.monotonic()
    app_and_model(cluster, "metered")
    after_creation = time.monotonic()
    peers(cluster, "metered")
    post(cluster, "metered", {"input_batch": [[float(n)] for n in range(10)]})
    time.sleep(5.5)
    meter = metric(cluster, "app:metered:prediction_throughput")
    now = time.monotonic()
    assert 10 / (now - before_creation) - 0.05 <= float(meter["rate"]) <= 10 / (now - after_creation) + 0.05
    for field in ("rate_1min", "rate_5min", "rate_15min"):
        assert 0 <= float(meter[field]) <= 10 / 5 + 0.01, meter


@pytest.fixture(scope="module")
def backlog_batches(cluster):
    """Batches of exactly 1, 16, 53, 104, 113 and 185 queries (metrics_test.cpp's data
    16, 53, 104, 113, 185, 202 less its last value, after the lone first query of an idle
    replica), sent to a model registered with batch_size 1000: each backlog waits behind the
    batch held before it. Returns (the sizes, /metrics after, the requests' answers)."""
    sizes = [1, 16, 53, 104, 113, 185]
    app_and_model(cluster, "hist", batch_size=1000)
    peer = Peer(PORTS["rpc_port"], "hist", hold=True)
    peer.start()
    try:
        wait_for(lambda: "hist:1:0" in cluster.get_all_model_replicas(), 15, "the replica registering")
        answers, value = [], 0.0
        scheduled = count(cluster, "internal:aggregate_num_predictions")
        for index, size in enumerate(sizes):
            inputs = [[value + n] for n in range(size)]
            value += size
            payload = {"input": inputs[0]} if size == 1 else {"input_batch": inputs}
            answers.append(post_later(cluster, "hist", payload))
            until_queued(cluster, scheduled, size)
            scheduled += size
            if index:
                peer.release()
            peer.wait_batches(index + 1)
            assert len(peer.batches[index]["inputs"]) == size, "the backlog was not one batch"
        peer.release(hold=False)
        answers = [a.result().json() for a in answers]
        return sizes, metrics(cluster)[1], answers
    finally:
        peer.stop()


def test_batch_size_histogram_size_min_max_and_tail_percentiles(backlog_batches):
    """MetricsTests.HistogramStatsAreCorrectWithNumericallySmallElements (min, max, p95, p99),
    on model:<name>:<version>:batch_size: one sample per batch, in queries."""
    sizes, flat, answers = backlog_batches
    assert all(not a.get("default", False) for a in answers)
    histogram = flat["model:hist:1:batch_size"]
    assert int(histogram["size"]) == len(sizes)
    assert float(histogram["min"]) == min(sizes) and float(histogram["max"]) == max(sizes)
    assert float(histogram["p95"]) == clipper_percentile(sizes, 0.95) == 185
    assert float(histogram["p99"]) == clipper_percentile(sizes, 0.99) == 185


def test_batch_size_histogram_median_is_interpolated_as_clippers(backlog_batches):
    """MetricsTests.HistogramStatsAreCorrectWithNumericallySmallElements: p50 of an even number
    of samples lies between the middle two (108.5 for Clipper's data; 78.5 here), by
    metrics.cpp Histogram::percentile (rank * (n + 1), interpolated)."""
    # The port of Histogram::percentile first gives Clipper's own expected values
    # (HistogramPercentileFunctionCorrectness, HistogramStatsAreCorrectWithNumericallySmallElements).
    assert int(clipper_percentile([15, 20, 35, 40, 50], 0.4)) == 26
    assert [clipper_percentile([15], rank) for rank in (0.4, 0.0, 1.0)] == [15, 15, 15]
    assert abs(clipper_percentile([16, 53, 104, 113, 185, 202], 0.5) - 108.5) <= 0.01
    sizes, flat, _ = backlog_batches
    histogram = flat["model:hist:1:batch_size"]
    expected = clipper_percentile(sizes, 0.5)
    assert expected == 78.5
    assert abs(float(histogram["p50"]) - expected) <= 0.01, histogram


def test_batch_size_histogram_mean_and_std_dev_are_reported_to_double_precision(backlog_batches):
    """MetricsTests.MetricsRegistryReportingFormatCorrectness asserts ASSERT_DOUBLE_EQ between
    the reported mean (and std_dev) and the histogram's own: property_tree writes a double with
    digits10 + 1 significant digits. Here: mean 472/6 and the population standard deviation."""
    sizes, flat, _ = backlog_batches
    histogram = flat["model:hist:1:batch_size"]
    mean = sum(sizes) / len(sizes)
    std_dev = math.sqrt(sum((s - mean) ** 2 for s in sizes) / len(sizes))
    assert float(histogram["mean"]) == pytest.approx(mean, rel=1e-12, abs=0), histogram
    assert float(histogram["std_dev"]) == pytest.approx(std_dev, rel=1e-12, abs=0), histogram


def test_model_latency_histogram_has_one_sample_per_query(backlog_batches):
    """task_executor.hpp on_response_recv inserts one latency per query of the batch into
    model:<name>:<version>:prediction_latency (the batch_size histogram gets one per batch)."""
    sizes, flat, _ = backlog_batches
    assert int(flat["model:hist:1:prediction_latency"]["size"]) == min(sum(sizes), 4096)


def test_app_latency_histogram_has_one_sample_per_prediction(backlog_batches):
    """query_frontend.hpp: for every prediction of a request (each element of an input_batch)
    app_metrics.latency_->insert, num_predictions_->increment(1), throughput_->mark(1)."""
    sizes, flat, _ = backlog_batches
    assert int(flat["app:hist:num_predictions"]["count"]) == sum(sizes)
    assert int(flat["app:hist:prediction_latency"]["size"]) == min(sum(sizes), 4096)


def test_aggregate_num_predictions_counts_cached_answers_too(cluster, peers):
    """task_executor.hpp schedule_predictions: predictions_counter_->increment(tasks.size())
    before any cache lookup, so internal:aggregate_num_predictions counts every prediction
    scheduled on a model, cached or not (the cache is counted apart, in
    internal:prediction_cache_lookups / _hit_ratio)."""
    app_and_model(cluster, "cached-count")
    peer = peers(cluster, "cached-count")
    before = count(cluster, "internal:aggregate_num_predictions")
    lookups = count(cluster, "internal:prediction_cache_lookups")
    for _ in range(3):
        assert post(cluster, "cached-count", {"input": [5.0]})["output"] == 5.0
    assert len(peer.batches) == 1
    assert count(cluster, "internal:prediction_cache_lookups") - lookups == 3
    assert float(metric(cluster, "model:cached-count:1:cache_hit_ratio")["ratio"]) == pytest.approx(2 / 3, abs=0.01)
    assert count(cluster, "internal:aggregate_num_predictions") - before == 3


def clipper_exporter_gauges(document):
    """monitoring/front_end_exporter.py's conversion: every leaf of every category, flattened
    with '_' (flatten_json), ':' and '-' replaced by '_', kept when float() takes it."""
    gauges = {}
    for entries in document.values():
        for entry in entries:
            for metric_name, fields in entry.items():
                for field, value in fields.items():
                    try:
                        number = float(value)
                    except ValueError:
                        continue
                    gauges[f"{metric_name}_{field}".replace(":", "_").replace("-", "_")] = number
    return gauges


def prometheus_samples(conn):
    response = requests.get(f"http://{conn.get_metric_addr()}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples, types = {}, {}
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples, types


def test_the_metrics_port_serves_clippers_exporter_gauges(cluster, peers):
    """monitoring/front_end_exporter.py on port 1390: each numeric leaf of /metrics becomes a
    gauge <metric>_<field> with ':' and '-' as '_' (app_<app>_prediction_latency_p99 ...)."""
    app_and_model(cluster, "prom-app")
    peers(cluster, "prom-app")
    post(cluster, "prom-app", {"input_batch": [[1.0], [2.0], [3.0]]})
    expected = clipper_exporter_gauges(metrics(cluster)[0])
    samples, types = prometheus_samples(cluster)
    missing = sorted(set(expected) - set(samples))
    assert not missing, f"gauges of Clipper's exporter not served: {missing[:10]}"
    assert all(types.get(name) == "gauge" for name in expected)
    for name in ("app_prom_app_num_predictions_count", "model_prom_app_1_num_predictions_count"):
        assert samples[name] == expected[name] == 3
    assert "app_prom_app_prediction_latency_p99" in samples
    assert "internal_prediction_cache_hit_ratio_ratio" in samples


LATENCY_BUCKETS = [5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500]
TRANSFER_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_a_replica_reports_clippers_model_container_metrics(cluster):
    """containers/python/rpc.py with monitoring/metrics_config.yaml ("Model Container"): per
    prediction request message, clipper_mc_pred_total + 1 and one observation in each of
    clipper_mc_{end_to_end_latency,handle_time}_ms (buckets 5 ... 500) and
    clipper_mc_{recv,parse}_time_ms (buckets 0.1 ... 1.0), served on the metrics port."""
    from prometheus_client.parser import text_string_to_metric_families
    from clipper_admin.deployers import python as python_deployer

    cluster.register_application("mc-app", "doubles", "default", LONG_SLO)
    python_deployer.deploy_python_closure(cluster, "mc-model", 1, "doubles",
                                          lambda xs: [str(sum(x)) for x in xs])
    cluster.link_model_to_app("mc-app", "mc-model")
    for n in range(3):
        assert post(cluster, "mc-app", {"input": [float(n), 1.0]})["output"] == n + 1.0

    def mine():
        text = requests.get(f"http://{cluster.get_metric_addr()}/metrics", timeout=10).text
        return [s for family in text_string_to_metric_families(text) for s in family.samples
                if s.labels.get("model_name") == "mc-model"]

    def value(name):
        return sum(s.value for s in mine() if s.name == name)
    wait_for(lambda: value("clipper_mc_pred_total") == 3, 10, "3 requests counted")
    for name, buckets in (("clipper_mc_end_to_end_latency_ms", LATENCY_BUCKETS),
                          ("clipper_mc_handle_time_ms", LATENCY_BUCKETS),
                          ("clipper_mc_recv_time_ms", TRANSFER_BUCKETS),
                          ("clipper_mc_parse_time_ms", TRANSFER_BUCKETS)):
        bounds = sorted(float(s.labels["le"]) for s in mine() if s.name == name + "_bucket")
        assert bounds == [float(b) for b in buckets] + [math.inf], (name, bounds)
        assert value(name + "_count") == 3, name
    cluster.stop_models("mc-model")


# ---------------------------------------------------------------------------------------------
# The RPC protocol from the container's side: frames (clipper_rpc.py) ...
# ---------------------------------------------------------------------------------------------
def test_heartbeats_are_answered_as_clippers_rpc_service_answers_them(cluster):
    """rpc_service.cpp send_heartbeat_response: a heartbeat from an unknown connection asks for
    the container's metadata (type 1); from a registered one it is a keep-alive (type 0). Every
    message from the frontend carries the RPC version frame (3)."""
    app_and_model(cluster, "beats")
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"tcp://127.0.0.1:{PORTS['rpc_port']}")
    try:
        def reply():
            assert socket.poll(5000), "no heartbeat reply"
            return rpc.parse_from_clipper(socket.recv_multipart())
        socket.send_multipart(rpc.heartbeat())
        assert reply() == {"type": "heartbeat_reply", "heartbeat_type": rpc.REQUEST_CONTAINER_METADATA}
        socket.send_multipart(rpc.heartbeat())               # still unknown: asked again
        assert reply()["heartbeat_type"] == rpc.REQUEST_CONTAINER_METADATA
        socket.send_multipart(rpc.new_container("beats", "1", "doubles"))
        wait_for(lambda: "beats:1:0" in cluster.get_all_model_replicas(), 10, "registration")
        socket.send_multipart(rpc.heartbeat())
        assert reply() == {"type": "heartbeat_reply", "heartbeat_type": rpc.KEEPALIVE}
        socket.send_multipart(rpc.new_container("beats", "1", "doubles"))   # ignored: registered
        time.sleep(0.3)
        assert [r for r in cluster.get_all_model_replicas() if r.startswith("beats:")] == ["beats:1:0"]
    finally:
        socket.close(0)


@pytest.mark.parametrize("name, version_frames", [
    ("noversion", []),                      # no RPC version frame at all
    ("version-two", [rpc.u32(2)]),          # RPC version 2
])
def test_a_container_of_another_rpc_version_is_not_registered(cluster, name, version_frames):
    """rpc_service.cpp receive_message, NewContainer: a container that gives no RPC version, or
    another than 3, is logged and not registered (asked for its metadata again at its next
    heartbeat); queries for its version keep getting the default at once."""
    app_and_model(cluster, name)
    registration = [b"", rpc.u32(rpc.NEW_CONTAINER), name.encode(), b"1", b"3", *version_frames]
    peer = Peer(PORTS["rpc_port"], name, registration=registration)
    peer.start()
    try:
        wait_for(lambda: sum(1 for m in peer.received if m["type"] == "heartbeat_reply") >= 2, 10,
                 "two heartbeat replies")
        assert all(m["heartbeat_type"] == rpc.REQUEST_CONTAINER_METADATA
                   for m in peer.received if m["type"] == "heartbeat_reply")
        assert not [r for r in cluster.get_all_model_replicas() if r.startswith(name + ":")]
    finally:
        peer.stop()
    assert peer.error is None, repr(peer.error)
    assert post(cluster, name, {"input": [1.0]})["default_explanation"] == NO_CONNECTED_MODELS


def test_prediction_requests_are_framed_and_numbered_as_clippers(cluster, peers):
    """rpc_service.cpp send_message / send_messages and datatypes.cpp PredictionRequest: version
    3, ContainerContent, a u32 message id counting up by one per batch sent, request type
    predict, a header [input type, n, byte size of each input], one frame per input (checked
    frame by frame by clipper_rpc.parse_from_clipper)."""
    app_and_model(cluster, "framing")
    peer = peers(cluster, "framing")
    for n in range(1, 4):
        post(cluster, "framing", {"input": [float(n)] * n})
    ids = [rpc.read_u32(b["msg_id"]) for b in peer.batches]
    assert ids == list(range(ids[0], ids[0] + 3)), ids
    assert [b["input_type"] for b in peer.batches] == [rpc.TYPE_CODES["doubles"]] * 3
    assert [len(b["inputs"][0]) for b in peer.batches] == [8, 16, 24]      # bytes, not elements
