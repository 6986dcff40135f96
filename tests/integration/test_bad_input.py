"""Hostile and broken requests: each gets a clear 4xx, and the cluster keeps serving."""
import gzip
import socket
import threading
import time

import orjson
import pytest
import requests

from clipper.config import Config
from clipper.query_frontend.server import UPDATE_SCHEMA
from clipper.rpc import codec
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper_admin.deployers import python as python_deployer
from helpers import rpc_peer, total

PORTS = dict(clipper_query_port=23337, clipper_management_port=23338, clipper_rpc_port=23700,
             clipper_metric_port=23390)
BODY_LIMIT = 256 * 1024
BODY_TIMEOUT = 1
SINGLE_SLO_MICROS = 100_000


@pytest.fixture(scope="module")
def cluster():
    conn = ClipperConnection(LocalContainerManager(cluster_name="bad-input", max_body_size=BODY_LIMIT,
                                                   **PORTS))
    conn.start_clipper(qf_http_timeout_content=BODY_TIMEOUT)
    try:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        python_deployer.create_endpoint(conn, "single", "doubles", total, slo_micros=SINGLE_SLO_MICROS)
        yield conn
    finally:
        conn.stop_all(graceful=False)


def running(cluster):
    """Every process of the cluster, by pid and start time: a restarted one differs."""
    return {(p["pid"], p["create_time"]) for p in cluster.cm.cluster.processes()}


@pytest.fixture
def still_serving(cluster):
    """After the test's abuse, no process has died and a good prediction is answered by the model."""
    before = running(cluster)
    yield
    response = requests.post(predict_url(cluster), json={"input": [1.5, 2]}, timeout=10)
    assert response.json() == {"query_id": response.json()["query_id"], "output": 3.5, "default": False}
    assert requests.get(f"http://{cluster.cm.get_admin_addr()}/admin/ping", timeout=5).text == "PONG"
    assert running(cluster) == before, "a process of the cluster died or was restarted"


def post(url, data, content_type="application/json", **headers):
    return requests.post(url, data=data, headers={"Content-Type": content_type, **headers}, timeout=10)


def predict_url(cluster, app="sum"):
    return f"http://{cluster.get_query_addr()}/{app}/predict"


def admin_url(cluster, endpoint="add_app"):
    return f"http://{cluster.cm.get_admin_addr()}/admin/{endpoint}"


def cause(response) -> str:
    """The explanation: the query API answers JSON {"error", "cause"}, the management API plain text."""
    if response.headers["Content-Type"].startswith("application/json"):
        return response.json()["cause"]
    return response.text


def test_oversized_bodies_get_413(cluster, still_serving):
    big = b'{"input": [' + b"1.0," * BODY_LIMIT + b"1.0]}"
    for url in (predict_url(cluster), admin_url(cluster)):
        response = post(url, big)
        assert response.status_code == 413 and f"larger than {BODY_LIMIT} bytes" in cause(response)
        assert "max_body_size" in cause(response)        # the setting that raises the limit
    assert post(predict_url(cluster), big).json()["error"] == "Body too large"


def test_compressed_bodies_are_limited_and_checked(cluster, still_serving):
    """Content-Encoding: gzip is decoded, within the same limit; bytes that are not gzip get a 400."""
    gzipped = {"Content-Encoding": "gzip"}
    response = post(predict_url(cluster), gzip.compress(b'{"input": [1.0, 2.0]}'), **gzipped)
    assert response.status_code == 200 and response.json()["output"] == 3.0
    bomb = gzip.compress(b'{"input": [' + b"0.0," * (4 * BODY_LIMIT) + b"0.0]}")
    assert len(bomb) < BODY_LIMIT / 10
    for url in (predict_url(cluster), admin_url(cluster)):
        response = post(url, bomb, **gzipped)
        assert response.status_code == 413 and f"larger than {BODY_LIMIT} bytes" in cause(response)
        response = post(url, b'{"input": [1.0]}', **gzipped)
        assert response.status_code == 400 and "could not be decoded" in cause(response)


@pytest.mark.parametrize("depth", [2_000, 100_000])   # both under the body limit
def test_deep_nesting_gets_400(cluster, still_serving, depth):
    for url, key in ((predict_url(cluster), b"input"), (admin_url(cluster), b"name")):
        response = post(url, b'{"' + key + b'": ' + b"[" * depth + b"]" * depth + b"}")
        assert response.status_code == 400 and "not valid JSON" in cause(response)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_get_400(cluster, still_serving, literal):
    response = post(predict_url(cluster), b'{"input": [1.0, ' + literal + b"]}")
    assert response.status_code == 400 and "not valid JSON" in cause(response)
    response = post(admin_url(cluster), b'{"name": "a", "input_type": "doubles", "default_output": "x", '
                                        b'"latency_slo_micros": ' + literal + b"}")
    assert response.status_code == 400 and "not valid JSON" in cause(response)


def test_non_utf8_bodies_get_400(cluster, still_serving):
    response = post(predict_url(cluster), b'{"input": [1.0], "version": "\xff\xfe"}')
    assert response.status_code == 400 and "not valid JSON" in cause(response)
    response = post(admin_url(cluster), b'{"name": "\xc3\x28"}')
    assert response.status_code == 400 and "not valid JSON" in cause(response)


def test_wrong_content_type_gets_415(cluster, still_serving):
    response = post(predict_url(cluster), b'{"input": [1.0]}', content_type="text/plain")
    assert response.status_code == 415 and "Content-Type: application/json" in cause(response)
    assert response.json()["error"] == "Unsupported media type"      # was "Bad request"
    response = post(admin_url(cluster), b"name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and "Content-Type: application/json" in cause(response)
    # An empty header says no more than none: read as JSON (it was "Content-Type  is not supported").
    assert post(predict_url(cluster), b'{"input": [1.0]}', content_type="").json()["output"] == 1.0
    assert post(admin_url(cluster, "get_all_applications"), b'{"verbose": false}', content_type="").status_code == 200


def test_unknown_applications_and_versions_are_refused_at_once(cluster, still_serving):
    """Before the query frontend's state barrier was fixed, each of these waited 1 s for it."""
    started = time.monotonic()
    for i in range(20):
        response = post(predict_url(cluster, app=f"nosuch{i}"), b'{"input": [1.0]}')
        assert response.status_code == 404 and "No application named" in cause(response)
        response = post(predict_url(cluster), b'{"input": [1.0], "version": "%d"}' % (i + 100))
        assert response.status_code == 400 and "does not exist" in cause(response)
    assert time.monotonic() - started < 10      # 40 requests; 40 s when each waited


def raw_connection(cluster, api="query"):
    addr = cluster.get_query_addr() if api == "query" else cluster.cm.get_admin_addr()
    return socket.create_connection(("127.0.0.1", int(addr.split(":")[1])), timeout=10)


@pytest.mark.parametrize("api, path", [("query", b"/sum/predict"), ("management", b"/admin/get_application")])
def test_a_body_that_trickles_in_gets_408(cluster, still_serving, api, path):
    body = b'{"name": "sum", "input": [1.0, 2.0, 3.0, 4.0]}'
    with raw_connection(cluster, api) as connection:
        connection.sendall(b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % (path, len(body)))
        started = time.monotonic()
        for byte in body[:5]:                      # one byte every 0.4 s: slower than the limit
            connection.sendall(bytes([byte]))
            time.sleep(0.4)
        reply = connection.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 1 s" in reply
    assert api == "management" or b'"error":"Request timeout"' in reply      # was "Bad request"
    assert time.monotonic() - started < BODY_TIMEOUT + 2


def test_clients_that_vanish_mid_request_leave_nothing_broken(cluster, still_serving):
    for api in ("query", "management"):
        for cut in (b"POST /sum/predict HTTP/1.1\r\nHost: loc", b"POST /sum/predict HTTP/1.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\": [1"):
            for _ in range(50):
                with raw_connection(cluster, api) as connection:
                    connection.sendall(cut)


@pytest.mark.parametrize("api, path, body", [
    ("query", b"/sum/predict", b'{"input": [1.0, 2.0]}'),
    ("management", b"/admin/add_app", b'{"name": "half-closed", "input_type": "doubles", '
                                      b'"default_output": "0", "latency_slo_micros": 100000}')])
def test_a_client_that_half_closes_gets_its_answer(cluster, still_serving, api, path, body):
    """shutdown(SHUT_WR) after the request is legal HTTP/1.1; both servers dropped such clients."""
    with raw_connection(cluster, api) as connection:
        connection.sendall(b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body))
        connection.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := connection.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.endswith(b'"output":3.0,"default":false}' if api == "query"
                          else b"Successfully added application with name 'half-closed'")


@pytest.mark.parametrize("body, reason", [
    (b"[]", "Can only get key-value pair from an object (the body is Array)"),
    (b"", "body is not valid JSON ("),
    (b'{"input": [1.0], "label": 1.0}', "JSON object does not have required key: uid"),
    (b'{"uid": 1, "input": [1.0]}', "JSON object does not have required key: label"),
    (b'{"uid": 1, "label": 1.0, "input_batch": [[1.0]]}', "JSON object does not have required key: input"),
    # query_frontend.hpp decode_and_handle_update reads uid (get_long), then input, then label
    # (get_double), with json_util.cpp's texts; an integer label is ours (README).
    (b'{"uid": 1, "input": "x"}', "Type mismatch! JSON key input expected type Array but found type String"),
    (b'{"uid": "1", "label": 1.0, "input": [1.0]}',
     "Type mismatch! JSON key uid expected type Number but found type String"),
    (b'{"uid": 1.5, "label": 1.0, "input": [1.0]}', "PredictionData of type Number is not of type long ("),
    (b'{"uid": 9223372036854775808, "label": 1.0, "input": [1.0]}',
     "PredictionData of type Number is not of type long ("),
    (b'{"uid": 1, "label": "1", "input": [1.0]}',
     "Type mismatch! JSON key label expected type Number but found type String"),
    (b'{"uid": 1, "label": null, "input": ["a"]}', "Array input of type String is not of type double"),
], ids=["array", "empty", "no-uid", "no-label", "input_batch", "input-before-label", "uid-string", "uid-float",
        "uid-int64", "label-string", "input-before-label-type"])
def test_update_errors_show_the_update_schema(cluster, still_serving, body, reason):
    """/update reads its input with /predict's checks; its errors used to end with /predict's
    schema, which has no uid nor label."""
    response = post(f"http://{cluster.get_query_addr()}/sum/update", body)
    assert response.status_code == 400 and response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith(f"Error parsing JSON: {reason}")
    assert response.text.endswith(f". Expected JSON schema: {UPDATE_SCHEMA}")


def test_a_batch_over_the_limit_gets_413_naming_it(cluster, still_serving):
    limit = Config.max_batch_size
    response = post(predict_url(cluster), orjson.dumps({"input_batch": [[0.0]] * (limit + 1)}))
    assert response.status_code == 413 and f"more than {limit}" in cause(response)
    assert "max_batch_size" in cause(response)


def test_the_largest_batch_does_not_stall_other_clients(cluster, still_serving):
    """While the largest batch the limits allow is parsed, scheduled and answered, a single
    query of another application is answered within its objective (plus a margin)."""
    slo = SINGLE_SLO_MICROS / 1e6
    inputs = min(Config.max_batch_size, (BODY_LIMIT - 20) // len(b"[0],"))
    big = orjson.dumps({"input_batch": [[i % 10] for i in range(inputs)]})
    assert len(big) <= BODY_LIMIT
    finished = threading.Event()
    answered = []

    def send_big_batches():
        with requests.Session() as session:
            for _ in range(3):
                response = session.post(predict_url(cluster), data=big, timeout=60,
                                        headers={"Content-Type": "application/json"})
                answered.append(len(response.json()["batch_predictions"]))
        finished.set()

    latencies = []
    with requests.Session() as session:
        session.post(predict_url(cluster, "single"), json={"input": [0.5]}, timeout=10)  # warm
        sender = threading.Thread(target=send_big_batches)
        sender.start()
        i = 0
        while not finished.is_set():
            i += 1
            started = time.monotonic()
            response = session.post(predict_url(cluster, "single"), json={"input": [float(i)]}, timeout=10)
            latencies.append(time.monotonic() - started)
            assert response.json()["default"] is False and response.json()["output"] == float(i)
        sender.join()
    assert answered == [inputs] * 3
    assert len(latencies) > 5 and max(latencies) < slo + 0.15, sorted(latencies)[-5:]


def test_a_container_announcing_a_name_the_api_refuses_is_not_registered(cluster, still_serving):
    """Model names and versions become parts of Redis keys: a container on the (open) RPC port
    that announces one with ',' or ':' is ignored, as the management API refuses them."""
    received = rpc_peer(PORTS["clipper_rpc_port"], "fake:1", version="1,x", seconds=2)
    assert any(getattr(m, "heartbeat_type", None) == codec.HEARTBEAT_REQUEST_METADATA for m in received)
    replicas = cluster.get_all_model_replicas(verbose=True)
    assert replicas and all(r["model_name"] in ("sum", "single") for r in replicas), replicas


@pytest.mark.parametrize("name", ["s*", "su?", "[s]um"])
def test_a_model_name_with_glob_characters_matches_only_itself(cluster, still_serving, name):
    """Clipper allows these characters in names; the lookup of a model's versions must not
    take them for a pattern that matches another model ("s*" is not "sum")."""
    response = post(admin_url(cluster, "set_model_version"),
                     orjson.dumps({"model_name": name, "model_version": "1"}))
    assert response.status_code == 400
    assert response.text == f"Cannot set version for nonexistent model '{name}'"
    assert cluster.get_current_model_version("sum") == "1"


def test_a_managed_cluster_takes_its_batch_limit_and_header_timeout():
    """max_batch_size and header_timeout reach the query frontend of a cluster that
    LocalContainerManager starts (they could be set only on processes started by hand)."""
    ports = dict(clipper_query_port=23437, clipper_management_port=23438, clipper_rpc_port=23800,
                 clipper_metric_port=23490)
    conn = ClipperConnection(LocalContainerManager(cluster_name="limits", max_batch_size=2,
                                                   header_timeout=0.5, **ports))
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        assert post(predict_url(conn), orjson.dumps({"input_batch": [[1.0]] * 2})).status_code == 200
        response = post(predict_url(conn), orjson.dumps({"input_batch": [[1.0]] * 3}))
        assert response.status_code == 413 and "more than 2" in cause(response)
        with socket.create_connection(("127.0.0.1", ports["clipper_query_port"])) as half_sent:
            half_sent.sendall(b"POST /sum/predict HTTP/1.1\r\nHost: t\r\n")
            half_sent.settimeout(10)
            started = time.monotonic()
            reply = half_sent.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 3
    finally:
        conn.stop_all()


@pytest.mark.parametrize("settings", [dict(max_batch_size=0), dict(max_batch_size=2.5),
                                      dict(header_timeout=0), dict(header_timeout="10"),
                                      dict(busy_poll_us=-1), dict(busy_poll_us="200")])
def test_frontend_limits_out_of_range_are_refused(settings):
    with pytest.raises(ClipperException, match="must be"):
        LocalContainerManager(cluster_name="never-started", **settings)


def test_a_port_given_to_two_roles_is_refused_before_anything_starts():
    """Without this check the cluster started, and its query frontend kept failing with
    "port already in use (is another Clipper cluster running?)" while start_clipper waited."""
    conn = ClipperConnection(LocalContainerManager(cluster_name="one-port-two-roles", clipper_query_port=23537,
                                                   clipper_management_port=23538, clipper_rpc_port=23537))
    with pytest.raises(ClipperException) as raised:
        conn.start_clipper()
    assert str(raised.value) == ("Port 23537 is given to both the query frontend and the model RPC: "
                                 "each needs a port of its own")
    with pytest.raises(ClipperException, match="No running Clipper cluster"):
        ClipperConnection(LocalContainerManager(cluster_name="one-port-two-roles")).connect()
