"""Hostile and broken requests: each gets a clear 4xx, and the cluster keeps serving."""
import socket
import time

import pytest
import requests

from clipper_admin import ClipperConnection, LocalContainerManager
from clipper_admin.deployers import python as python_deployer

PORTS = dict(clipper_query_port=52337, clipper_management_port=52338, clipper_rpc_port=57001,
             clipper_metric_port=52390)
BODY_LIMIT = 64 * 1024
BODY_TIMEOUT = 1


def total(xs):
    return [str(sum(x)) for x in xs]


@pytest.fixture(scope="module")
def cluster():
    conn = ClipperConnection(LocalContainerManager(cluster_name="bad-input", max_body_size=BODY_LIMIT, **PORTS))
    conn.start_clipper(qf_http_timeout_content=BODY_TIMEOUT)
    try:
        python_deployer.create_endpoint(conn, "sum", "doubles", total)
        yield conn
    finally:
        conn.stop_all(graceful=False)


@pytest.fixture
def still_serving(cluster):
    """After the test's abuse, a good prediction is answered by the model."""
    yield
    response = requests.post(f"http://{cluster.get_query_addr()}/sum/predict", json={"input": [1.5, 2]},
                             timeout=10)
    assert response.json() == {"query_id": response.json()["query_id"], "output": 3.5, "default": False}
    assert requests.get(f"http://{cluster.cm.get_admin_addr()}/admin/ping", timeout=5).text == "PONG"


def post(url, data, content_type="application/json"):
    return requests.post(url, data=data, headers={"Content-Type": content_type}, timeout=10)


def predict_url(cluster):
    return f"http://{cluster.get_query_addr()}/sum/predict"


def admin_url(cluster, endpoint="add_app"):
    return f"http://{cluster.cm.get_admin_addr()}/admin/{endpoint}"


def test_oversized_bodies_get_413(cluster, still_serving):
    big = b'{"input": [' + b"1.0," * BODY_LIMIT + b"1.0]}"
    response = post(predict_url(cluster), big)
    assert response.status_code == 413
    assert f"larger than {BODY_LIMIT} bytes" in response.json()["cause"]
    response = post(admin_url(cluster), big)
    assert response.status_code == 413 and f"larger than {BODY_LIMIT} bytes" in response.text


@pytest.mark.parametrize("depth", [2_000, 30_000])   # both under the body limit
def test_deep_nesting_gets_400(cluster, still_serving, depth):
    nested = b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
    response = post(predict_url(cluster), nested)
    assert response.status_code == 400 and "not valid JSON" in response.json()["cause"]
    response = post(admin_url(cluster), b'{"name": ' + b"[" * depth + b"]" * depth + b"}")
    assert response.status_code == 400 and "not valid JSON" in response.text


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_get_400(cluster, still_serving, literal):
    response = post(predict_url(cluster), b'{"input": [1.0, ' + literal + b"]}")
    assert response.status_code == 400 and "not valid JSON" in response.json()["cause"]


def test_non_utf8_bodies_get_400(cluster, still_serving):
    response = post(predict_url(cluster), b'{"input": [1.0], "version": "\xff\xfe"}')
    assert response.status_code == 400 and "not valid JSON" in response.json()["cause"]
    response = post(admin_url(cluster), b'{"name": "\xc3\x28"}')
    assert response.status_code == 400 and "not valid JSON" in response.text


def test_wrong_content_type_gets_415(cluster, still_serving):
    response = post(predict_url(cluster), b'{"input": [1.0]}', content_type="text/plain")
    assert response.status_code == 415 and "Content-Type: application/json" in response.json()["cause"]
    response = post(admin_url(cluster), b"name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def raw_connection(cluster):
    host, port = cluster.get_query_addr().split(":")
    return socket.create_connection(("127.0.0.1", int(port)), timeout=10)


def test_a_body_that_trickles_in_gets_408(cluster, still_serving):
    body = b'{"input": [1.0, 2.0, 3.0, 4.0]}'
    with raw_connection(cluster) as connection:
        connection.sendall(b"POST /sum/predict HTTP/1.1\r\nHost: localhost\r\n"
                           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        started = time.monotonic()
        for byte in body[:5]:                      # one byte every 0.4 s: slower than the limit
            connection.sendall(bytes([byte]))
            time.sleep(0.4)
        reply = connection.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 1 s" in reply
    assert time.monotonic() - started < BODY_TIMEOUT + 2


def test_clients_that_vanish_mid_request_leave_nothing_broken(cluster, still_serving):
    for cut in (b"POST /sum/predict HTTP/1.1\r\nHost: loc", b"POST /sum/predict HTTP/1.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\": [1"):
        for _ in range(50):
            with raw_connection(cluster) as connection:
                connection.sendall(cut)


def test_a_body_that_cannot_be_decoded_gets_400(cluster, still_serving):
    response = requests.post(predict_url(cluster), data=b'{"input": [1.0]}', timeout=10,
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 400 and "could not be decoded" in response.json()["cause"]
