"""The management API under concurrent operators and a failing Redis: every change is
atomic, a 503 says truthfully whether anything changed, errors have Clipper's plain text."""
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis
import requests

from clipper.cluster.redis_binary import find_redis_server
from clipper.management.requests import MAX_DEFAULT_OUTPUT_LENGTH, MAX_LABELS, MAX_NAME_LENGTH, MAX_PATH_LENGTH
from helpers import ROOT

CALLERS = 20


@pytest.fixture(scope="module")
def admin_url(clipper_conn):
    return f"http://{clipper_conn.cm.get_admin_addr()}/admin"


def post_all(url, bodies):
    """POST every body at (nearly) the same moment; the answers in the same order."""
    start = threading.Barrier(len(bodies))

    def post(body):
        start.wait()
        return requests.post(url, json=body, timeout=30)
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def app_body(name, default_output="0"):
    return {"name": name, "input_type": "doubles", "default_output": default_output,
            "latency_slo_micros": 100000}


def model_body(name, version="1", container_name="c"):
    return {"model_name": name, "model_version": version, "labels": [], "input_type": "doubles",
            "container_name": container_name, "model_data_path": "DEPRECATED", "batch_size": -1}


def test_concurrent_identical_add_app_succeeds_once(clipper_conn, admin_url):
    answers = post_all(f"{admin_url}/add_app",
                       [app_body("contested", default_output=str(i)) for i in range(CALLERS)])
    won = [i for i, a in enumerate(answers) if a.status_code == 200]
    assert len(won) == 1, [a.text for a in answers]
    assert won == [i for i, a in enumerate(answers)
                   if a.text == "Successfully added application with name 'contested'"]
    assert all(a.status_code == 400 and a.text == "application 'contested' already exists"
               for a in answers if a.status_code != 200)
    # The winner's settings are the ones kept.
    assert clipper_conn.get_app_info("contested")["default_output"] == str(won[0])


def test_many_operators_writing_different_things_at_once_all_get_through(clipper_conn, admin_url):
    """Writes that do not conflict must not fail: one in six did with 50 operators at once
    (503, "changed too often"), when every write retried against every other."""
    names = [f"operator-{i}" for i in range(100)]
    answers = post_all(f"{admin_url}/add_app", [app_body(name) for name in names])
    assert [a.status_code for a in answers] == [200] * len(names), \
        [a.text for a in answers if a.status_code != 200][:3]
    assert set(names) <= set(clipper_conn.get_all_apps())
    for name in names:
        clipper_conn.unregister_application(name)


def test_concurrent_identical_add_model_succeeds_once(clipper_conn, admin_url):
    answers = post_all(f"{admin_url}/add_model",
                       [model_body("contested-model", container_name=f"c{i}") for i in range(CALLERS)])
    won = [i for i, a in enumerate(answers) if a.status_code == 200]
    assert len(won) == 1, [a.text for a in answers]
    assert all(a.status_code == 400 and a.text == "model with name 'contested-model' and "
               "version '1' already exists" for a in answers if a.status_code != 200)
    assert clipper_conn.get_model_info("contested-model", "1")["container_name"] == f"c{won[0]}"


def test_concurrent_links_of_different_models_link_at_most_one(clipper_conn, admin_url):
    clipper_conn.register_application("one-link", "doubles", "0", 100000)
    models = [f"candidate-{i}" for i in range(9)]
    for name in models:
        clipper_conn.register_model(name, "1", "doubles")
    answers = post_all(f"{admin_url}/add_model_links",
                       [{"app_name": "one-link", "model_names": [name]} for name in models])
    won = [models[i] for i, a in enumerate(answers) if a.status_code == 200]
    assert len(won) == 1, [a.text for a in answers]
    assert clipper_conn.get_linked_models("one-link") == won
    assert all(a.status_code == 400 and a.text == f"A model with name {won[0]} is already "
               "linked to 'one-link'." for a in answers if a.status_code != 200)


# ---- names: every name that can be registered can be used ----

def test_too_long_names_are_refused_naming_the_limit(clipper_conn, admin_url):
    longest = "a" * MAX_NAME_LENGTH
    clipper_conn.register_application(longest, "doubles", "0.5", 100000)
    answer = requests.post(f"http://{clipper_conn.get_query_addr()}/{longest}/predict",
                           json={"input": [1.0]}, timeout=10)
    assert answer.status_code == 200 and answer.json()["output"] == 0.5
    too_long = "b" * 10_000
    refused = [
        ("add_app", app_body(too_long), "application name"),
        ("add_model", model_body(too_long), "model name"),
        ("add_model", model_body("short", version=too_long), "model version"),
        ("add_model", {**model_body("short"), "labels": [too_long]}, "label"),
    ]
    for route, body, what in refused:
        answer = requests.post(f"{admin_url}/{route}", json=body, timeout=10)
        assert answer.status_code == 400, (route, what)
        assert answer.text == (f"The {what} is 10000 characters long; the limit is "
                               f"{MAX_NAME_LENGTH} characters")
    # What each query frontend keeps, and Redis twice: 40 defaults of 4 MB took 200 MiB.
    huge = "c" * (MAX_DEFAULT_OUTPUT_LENGTH + 1)
    for route, body, what, limit in [
            ("add_app", app_body("huge-default", default_output=huge), "default output", MAX_DEFAULT_OUTPUT_LENGTH),
            ("add_model", model_body("short", container_name=huge), "container name", MAX_PATH_LENGTH),
            ("add_model", {**model_body("short"), "model_data_path": huge}, "model data path", MAX_PATH_LENGTH)]:
        answer = requests.post(f"{admin_url}/{route}", json=body, timeout=10)
        assert answer.status_code == 400 and answer.text == (
            f"The {what} is {len(huge)} characters long; the limit is {limit} characters"), answer.text
    answer = requests.post(f"{admin_url}/add_model", json={**model_body("short"), "labels": ["l"] * (MAX_LABELS + 1)},
                           timeout=10)
    assert answer.status_code == 400 and answer.text == f"The model has {MAX_LABELS + 1} labels; the limit is {MAX_LABELS}"
    assert "huge-default" not in clipper_conn.get_all_apps()
    assert too_long not in clipper_conn.get_all_apps()
    assert not clipper_conn.get_all_models() or "short:1" not in clipper_conn.get_all_models()


# ---- errors: one renderer, Clipper's plain text ----

def test_wrong_method_on_a_known_route_is_405_with_allow(admin_url):
    answer = requests.get(f"{admin_url}/add_app", timeout=10)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"
    assert "accepts only POST" in answer.text
    missing = requests.post(f"{admin_url}/no_such_operation", json={}, timeout=10)
    assert missing.status_code == 404 and "POST /admin/<operation>" in missing.text


def test_an_internal_error_is_logged_and_answers_500(clipper_conn, admin_url, tmp_path):
    # State this frontend did not write (a hash without its fields) makes reading it fail.
    state = redis.Redis.from_url(clipper_conn.cm.cluster.settings()["config"]["redis_url"], db=5)
    state.hset("corrupted", "input_type", "doubles")
    try:
        answer = requests.post(f"{admin_url}/get_application", json={"name": "corrupted"}, timeout=10)
    finally:
        state.delete("corrupted")
    assert answer.status_code == 500
    assert answer.text == "Internal error of the management frontend; it has been logged."
    logs = clipper_conn.get_clipper_logs(str(tmp_path))
    management_log = next(open(p).read() for p in logs if "management" in os.path.basename(p))
    assert "KeyError: 'default_output'" in management_log
    assert requests.get(f"{admin_url}/ping", timeout=10).text == "PONG"


# ---- a failing Redis: a standalone management frontend behind a proxy we control ----
REDIS_PORT = 16381
ADMIN_PORT = 12438
REDIS_TIMEOUT = 1.0


class ReplyEatingProxy:
    """TCP proxy to Redis. Once armed, it passes the next write (a command carrying HSET)
    on to Redis, then closes the connection instead of relaying Redis's answer: the write
    is applied, and the frontend never hears so."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.ate = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            eat_reply = threading.Event()
            threading.Thread(target=self._forward_requests, args=(client, upstream, eat_reply),
                             daemon=True).start()
            threading.Thread(target=self._forward_replies, args=(upstream, client, eat_reply),
                             daemon=True).start()

    def _forward_requests(self, client, upstream, eat_reply):
        with client, upstream:
            while data := _receive(client):
                if self.armed.is_set() and b"HSET" in data:
                    self.armed.clear()
                    eat_reply.set()
                if not _send(upstream, data):
                    return

    def _forward_replies(self, upstream, client, eat_reply):
        while data := _receive(upstream):
            if eat_reply.is_set():
                self.ate.set()
                break
            if not _send(client, data):
                break
        for sock in (client, upstream):
            _close(sock)

    def close(self):
        self.listener.close()


def _receive(sock):
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock, data):
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def redis_behind_proxy(tmp_path):
    started = []
    proxy = None
    try:
        server = subprocess.Popen([find_redis_server(), "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                                   "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        started.append(server)
        client = redis.Redis(port=REDIS_PORT, db=5, socket_timeout=5)
        _wait_until(lambda: client.ping(), redis.ConnectionError)
        proxy = ReplyEatingProxy(REDIS_PORT)
        started.insert(0, subprocess.Popen(
            [sys.executable, "-m", "clipper", "management-frontend", f"--management-port={ADMIN_PORT}",
             f"--redis-url=redis://127.0.0.1:{proxy.port}", f"--redis-timeout={REDIS_TIMEOUT}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_until(lambda: requests.get(f"http://127.0.0.1:{ADMIN_PORT}/admin/ping", timeout=1).ok,
                    requests.RequestException)
        yield server, client, proxy
    finally:
        for process in started:          # the frontend first, Redis (perhaps stopped) last
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            process.wait(10)
        if proxy is not None:
            proxy.close()


def _wait_until(check, errors, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except errors:
            pass
        assert time.monotonic() < deadline, f"not ready within {timeout} s"
        time.sleep(0.05)


def add_app(name):
    return requests.post(f"http://127.0.0.1:{ADMIN_PORT}/admin/add_app", json=app_body(name), timeout=30)


def test_a_write_whose_answer_is_lost_is_reported_as_it_happened(redis_behind_proxy):
    _, state, proxy = redis_behind_proxy
    assert add_app("warm-up").status_code == 200
    proxy.armed.set()
    answer = add_app("answer-lost")
    assert proxy.ate.is_set(), "the proxy let the answer through"
    applied = bool(state.exists("answer-lost"))
    if answer.status_code == 503:
        assert not applied or "may or may not have been applied" in answer.text, \
            f"answered {answer.text!r} but the application was added"
    else:
        assert answer.status_code == 200 and applied
    # What the next caller hears agrees with the state.
    assert (add_app("answer-lost").status_code == 400) == applied


def test_admin_calls_answer_503_in_bounded_time_while_redis_hangs(redis_behind_proxy):
    server, state, _ = redis_behind_proxy
    os.kill(server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = add_app("while-hung")
        write_took = time.monotonic() - started
        started = time.monotonic()
        read = requests.post(f"http://127.0.0.1:{ADMIN_PORT}/admin/get_all_applications",
                             json={"verbose": False}, timeout=30)
        read_took = time.monotonic() - started
    finally:
        os.kill(server.pid, signal.SIGCONT)
    print(f"Redis hung: a write answered {answer.status_code} after {write_took:.2f} s, "
          f"a read {read.status_code} after {read_took:.2f} s (Redis timeout {REDIS_TIMEOUT} s)")
    assert answer.status_code == read.status_code == 503
    assert write_took < 3 * REDIS_TIMEOUT + 1 and read_took < REDIS_TIMEOUT + 1
    if "nothing was changed" in answer.text:
        time.sleep(0.5)
        assert not state.exists("while-hung"), "a 503 that said 'nothing was changed' was applied"
    else:
        assert "may or may not have been applied" in answer.text
