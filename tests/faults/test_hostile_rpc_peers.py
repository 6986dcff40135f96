"""Hostile local peers on the (open) RPC port and the query port: whatever they send or
hold, the query frontend keeps its memory, keeps serving, and drops the peer."""
import contextlib
import resource
import socket
import threading
import time

import psutil
import pytest
import requests
import zmq

from clipper.cluster.cluster_dir import still_running
from clipper.query_frontend.rpc_server import MAX_CONNECTIONS
from clipper.datatypes import InputType
from clipper.rpc import codec

from clipper_admin.deployers import python as python_deployer
from helpers import local_cluster, raw_rpc_connection, total, wait_for, zmtp_frame_header

PORTS = dict(query_port=27337, management_port=27338, rpc_port=27700, metric_port=27390)
MiB = 1024 * 1024
MAX_OUTPUT = 16 * MiB


def sized_output(xs):
    """An output of x[0] MiB for each input x."""
    return ["x" * int(x[0] * 1024 * 1024) for x in xs]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="rpc-peers", manager_kwargs={"max_output_size": MAX_OUTPUT}, **PORTS) as conn:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        yield conn


def frontend_process(conn):
    [pid] = [p["pid"] for p in conn.cm.cluster.processes() if p["role"] == "query-frontend"]
    return psutil.Process(pid)


def predicting_meanwhile(conn, stop):
    """Predictions sent one after another until ``stop`` is set; their answers."""
    answers = []

    def run():
        with requests.Session() as session:
            while not stop.is_set():
                answers.append(session.post(f"http://{conn.get_query_addr()}/sum/predict",
                                            json={"input": [1.0, 2.0]}, timeout=5).json())
    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def test_a_peer_sending_an_oversized_frame_is_dropped_before_the_frontend_buffers_it(cluster):
    frontend = frontend_process(cluster)
    rss_before = frontend.memory_info().rss
    stop = threading.Event()
    thread, answers = predicting_meanwhile(cluster, stop)
    frame_size, sent = 1024 * MiB, 0
    try:
        with raw_rpc_connection(PORTS["rpc_port"]) as peer:
            peer.sendall(zmtp_frame_header(0, more=True) + zmtp_frame_header(frame_size))
            block = bytes(MiB)
            with pytest.raises(OSError):       # the frontend closes the connection
                while sent < frame_size:
                    peer.sendall(block)
                    sent += len(block)
    finally:
        stop.set()
        thread.join()
    assert sent < frame_size / 4, f"the frontend took {sent // MiB} MiB of the frame"
    grown = frontend.memory_info().rss - rss_before
    assert grown < 64 * MiB, f"the frontend grew by {grown // MiB} MiB"
    assert answers and all(a["output"] == 3.0 and a["default"] is False for a in answers), answers[-3:]


def test_a_peer_that_takes_the_routing_ids_the_frontend_would_give_cannot_end_it(cluster):
    """libzmq numbered anonymous peers from the same start in every process (C's rand(),
    never seeded) and aborts on a duplicate: peers that took the next numbers as their own
    ids, then one more anonymous peer, ended the query frontend at once."""
    frontend = frontend_process(cluster)
    first = 0x6B8B4567                  # rand()'s first number, unseeded (glibc)
    with contextlib.ExitStack() as held:
        for n in range(50):
            routing_id = b"\x00" + (first + n).to_bytes(4, "big")
            held.enter_context(raw_rpc_connection(PORTS["rpc_port"], routing_id))
        time.sleep(0.5)
        context = zmq.Context()
        anonymous = context.socket(zmq.DEALER)
        anonymous.setsockopt(zmq.LINGER, 0)
        anonymous.connect(f"tcp://127.0.0.1:{PORTS['rpc_port']}")
        anonymous.send_multipart(codec.encode_heartbeat())
        try:
            assert anonymous.poll(5000), "the frontend did not answer a new peer"
        finally:
            anonymous.close(0)
            context.term()
    assert still_running(frontend)
    assert frontend_process(cluster).pid == frontend.pid, "the query frontend was restarted"
    assert requests.post(f"http://{cluster.get_query_addr()}/sum/predict", json={"input": [1.0, 2.0]},
                         timeout=5).json()["output"] == 3.0


def is_closed(connection):
    """Whether the other end closed ``connection`` (what it sent before is read past)."""
    connection.setblocking(False)
    try:
        while connection.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_connections_beyond_the_most_the_frontend_takes_are_closed_and_the_others_served(cluster):
    """Each connection may take a routing id: the count of them bounds how fast a peer can
    guess the ones libzmq will give (see the test above)."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2 * MAX_CONNECTIONS:
        pytest.skip("the hard limit on open files is below what the test holds")
    with contextlib.ExitStack() as held:
        connections = [held.enter_context(raw_rpc_connection(PORTS["rpc_port"]))
                       for _ in range(MAX_CONNECTIONS + 50)]
        time.sleep(1)
        closed = sum(map(is_closed, connections))
        assert 50 <= closed <= 52, closed      # the replica holds one connection
        assert requests.post(f"http://{cluster.get_query_addr()}/sum/predict",
                             json={"input": [1.0, 2.0]}, timeout=5).json()["output"] == 3.0
    context = zmq.Context()                    # once they are gone, new peers are let in
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    try:
        peer.connect(f"tcp://127.0.0.1:{PORTS['rpc_port']}")
        time.sleep(0.5)
        peer.send_multipart(codec.encode_heartbeat())
        assert peer.poll(5000), "a new peer was not answered"
    finally:
        peer.close(0)
        context.term()


def test_predictions_are_answered_during_a_flood_of_heartbeats(cluster):
    """Each heartbeat is answered, and each answer used to schedule another read of the
    socket: reads doubled every turn of the event loop, and predictions waited behind them
    (26 answered in 6 s, the slowest after 1.8 s; about 1,500 without the bug)."""
    stop = threading.Event()
    context = zmq.Context()
    flooder = context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.connect(f"tcp://127.0.0.1:{PORTS['rpc_port']}")
    heartbeat = codec.encode_heartbeat()

    def flood():
        while not stop.is_set():
            for _ in range(1000):
                flooder.send_multipart(heartbeat)
    flooding = threading.Thread(target=flood)
    flooding.start()
    predicting = threading.Event()
    try:
        time.sleep(0.5)
        thread, answers = predicting_meanwhile(cluster, predicting)
        time.sleep(3)
        predicting.set()
        thread.join()
    finally:
        predicting.set()
        stop.set()
        flooding.join()
        flooder.close(0)
        context.term()
    assert len(answers) >= 100, f"{len(answers)} predictions answered in 3 s of flood"
    assert all(a["output"] == 3.0 and a["default"] is False for a in answers)


def test_answers_to_unknown_batches_repeated_answers_and_miscounted_outputs(cluster):
    """A replica of the served model, on the open port, that answers each batch with an
    answer to a batch never sent, then with one output too many, or twice. The frontend
    ignores the unknown and repeated answers, reports the miscount, and keeps serving."""
    context = zmq.Context()
    fake = context.socket(zmq.DEALER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.connect(f"tcp://127.0.0.1:{PORTS['rpc_port']}")
    fake.send_multipart(codec.encode_new_container("sum", "1", InputType.DOUBLES))
    stop, batches = threading.Event(), []

    def answer_badly():
        while not stop.is_set():
            if not fake.poll(50):
                continue
            request = codec.decode_clipper_message(fake.recv_multipart())
            if not isinstance(request, codec.PredictionRequest):
                continue
            batches.append(request.msg_id)
            count = len(request.inputs)
            fake.send_multipart(codec.encode_prediction_response(request.msg_id + 1000, [b"666"] * count))
            if len(batches) % 2:
                fake.send_multipart(codec.encode_prediction_response(request.msg_id, [b"7"] * (count + 1)))
            else:
                for output in (b"7", b"8"):
                    fake.send_multipart(codec.encode_prediction_response(request.msg_id, [output] * count))
    answering = threading.Thread(target=answer_badly)
    answering.start()
    outcomes = []
    try:
        wait_for(lambda: len(cluster.get_all_model_replicas()) == 2, 10, "the fake replica registered")
        for i in range(40):            # inputs differ: the cache answers none of them
            response = requests.post(f"http://{cluster.get_query_addr()}/sum/predict",
                                     json={"input": [1.0, float(i)]}, timeout=5)
            outcomes.append((response.status_code, response.json().get("cause", response.json().get("output"))))
    finally:
        stop.set()
        answering.join()
        fake.close(0)
        context.term()
    assert batches, "the fake replica got no batch"
    allowed = {(200, 1.0 + i) for i in range(40)} | {(200, 7)} | {
        (500, "the model returned 2 outputs for 1 inputs")}
    assert set(outcomes) <= allowed, set(outcomes) - allowed
    assert (200, 7) in outcomes and (500, "the model returned 2 outputs for 1 inputs") in outcomes
    wait_for(lambda: len(cluster.get_all_model_replicas()) == 1, 10, "the fake replica dropped")
    assert requests.post(f"http://{cluster.get_query_addr()}/sum/predict", json={"input": [5.0, 5.0]},
                         timeout=5).json()["output"] == 10.0


def test_a_flood_of_malformed_messages_writes_a_few_log_lines(cluster):
    """Each malformed message used to log a warning: 10 MB of log a second from one peer."""
    log_file = cluster.cm.cluster.path / "logs" / "query-frontend.log"
    size_before = log_file.stat().st_size
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    try:
        peer.connect(f"tcp://127.0.0.1:{PORTS['rpc_port']}")
        for _ in range(20_000):
            peer.send_multipart([b"", b"junk"])
        peer.send_multipart(codec.encode_heartbeat())     # answered once all the junk was read
        assert peer.poll(30_000), "the frontend did not answer the heartbeat after the junk"
    finally:
        peer.close(0)
        context.term()
    grown = log_file.stat().st_size - size_before
    assert grown < 20_000, f"the query frontend's log grew by {grown} bytes"
    assert requests.post(f"http://{cluster.get_query_addr()}/sum/predict", json={"input": [1.0, 2.0]},
                         timeout=5).json()["output"] == 3.0


def test_outputs_up_to_the_limit_come_through_and_a_larger_one_is_a_clear_error(cluster):
    """A model's output travels in one frame: one over max_output_size would get its replica
    disconnected (and its batch sent again, and again), so the replica answers it as an error."""
    python_deployer.create_endpoint(cluster, "sized", "doubles", sized_output)
    url = f"http://{cluster.get_query_addr()}/sized/predict"
    response = requests.post(url, json={"input": [8.0]}, timeout=30)
    assert response.status_code == 200 and len(response.json()["output"]) == 8 * MiB
    response = requests.post(url, json={"input_batch": [[1.0], [17.0]]}, timeout=30)
    small, large = response.json()["batch_predictions"]
    assert len(small["output"]) == MiB
    assert f"most {MAX_OUTPUT} (its max_output_size)" in large["error"] + large.get("cause", ""), large
    assert requests.post(url, json={"input": [2.0]}, timeout=30).status_code == 200


@contextlib.contextmanager
def open_file_limit(soft):
    """This process, and what it starts meanwhile, may open only ``soft`` files."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_a_peer_holding_more_connections_than_the_soft_file_limit_locks_no_one_out():
    """Each connection holds a file descriptor, and the soft limit is often 1,024: a local
    process holding that many idle connections left new clients reset. The frontends take
    the hard limit."""
    soft = 256
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * soft:
        pytest.skip("the hard limit on open files is too low to tell")
    ports = dict(query_port=27437, management_port=27438, rpc_port=27800, metric_port=27490)
    with open_file_limit(soft):                   # the cluster's processes inherit it
        cluster = local_cluster(name="many-connections", **ports)
        conn = cluster.__enter__()
    held = []
    try:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        for port in (ports["query_port"], ports["management_port"], ports["rpc_port"]):
            held += [socket.create_connection(("127.0.0.1", port)) for _ in range(soft + 50)]
        response = requests.post(f"http://{conn.get_query_addr()}/sum/predict",
                                 json={"input": [1.0, 2.0]}, timeout=5)
        assert response.json()["output"] == 3.0
        assert requests.get(f"http://{conn.cm.get_admin_addr()}/admin/ping", timeout=5).text == "PONG"
    finally:
        for connection in held:
            connection.close()
        cluster.__exit__(None, None, None)
