"""Busy polling (clipper.busy_poll): between one client's back-to-back requests neither the
query frontend nor the replica goes to sleep, and once traffic stops both do."""
import socket
import subprocess
import sys
import time

import psutil
import pytest

from clipper import busy_poll
from clipper_admin.deployers import python as python_deployer
from helpers import local_cluster, total, wait_for

PORTS = dict(query_port=22337, management_port=22338, rpc_port=22700, metric_port=22390)
REQUESTS = 300
ERROR_PAUSE_SECONDS = 80e-6     # well within the 200 us window
BODY = b'{"input": [1.0, 2.0, 3.0]}'


def request_to(app: str) -> bytes:
    return (b"POST /%s/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (app.encode(), len(BODY), BODY))


PREDICTION, UNKNOWN_APP = request_to("sums"), request_to("no-such-app")

MANY_CORES = pytest.mark.skipif(busy_poll.window_seconds(200) == 0, reason="busy polling is off on a single core")


def serving_processes(conn, roles=("query-frontend", "model-container")):
    found = [psutil.Process(p["pid"]) for p in conn.cm.cluster.processes() if p["role"] in roles]
    assert len(found) == len(roles), conn.cm.cluster.processes()
    return found


def sleeps(processes) -> int:
    """How often these processes' threads have gone to sleep (voluntary context switches)."""
    return sum(process.num_ctx_switches().voluntary for process in processes)


def one_client(port: int, count: int, request: bytes = PREDICTION, pause: float = 0.0) -> None:
    """``count`` requests over one keep-alive connection, each sent ``pause`` seconds after the
    last is answered (a busy wait: a sleeping client would take longer than asked)."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        for _ in range(count):
            resume = time.perf_counter() + pause
            while time.perf_counter() < resume:
                pass
            client.sendall(request)
            answer = b""
            while not answer.endswith(b"}"):
                chunk = client.recv(65536)
                assert chunk, "the frontend closed the connection"
                answer += chunk
            if request is PREDICTION:
                assert answer.startswith(b"HTTP/1.1 200") and b'"default":false' in answer.replace(b" ", b""), answer
            else:
                assert answer.startswith(b"HTTP/1.1 404"), answer


def sleeps_per_request(conn, processes=None, request: bytes = PREDICTION, pause: float = 0.0) -> float:
    processes = processes or serving_processes(conn)
    one_client(PORTS["query_port"], 50, request)   # warm: the batch size has settled
    before = sleeps(processes)
    one_client(PORTS["query_port"], REQUESTS, request, pause)
    return (sleeps(processes) - before) / REQUESTS


def deployed_cluster(busy_poll_us):
    return local_cluster(name=f"busy-poll-{busy_poll_us}", **PORTS,
                         manager_kwargs={"busy_poll_us": busy_poll_us}, cache_size=0)


def deploy(conn):
    python_deployer.create_endpoint(conn, "sums", "doubles", total, slo_micros=1_000_000)
    wait_for(lambda: conn.get_num_replicas("sums", "1") == 1, 30, "the replica")


@MANY_CORES
def test_back_to_back_requests_wake_nobody_and_an_idle_cluster_sleeps():
    with deployed_cluster(200) as conn:
        deploy(conn)
        polling = sleeps_per_request(conn)
        # An error answer buys no polling: cheap bad requests must not make the frontend spin.
        # The client pauses within the window, so that a frontend still polling would find
        # the next request without sleeping, while one that has stopped has gone to sleep.
        after_errors = sleeps_per_request(conn, serving_processes(conn, ["query-frontend"]), UNKNOWN_APP,
                                          pause=ERROR_PAUSE_SECONDS)
        # Once the window after the last answer has passed, the processes sleep again.
        processes = serving_processes(conn)
        time.sleep(0.2)
        cpu_before = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
        time.sleep(1.0)
        idle_cpu = sum(p.cpu_times().user + p.cpu_times().system for p in processes) - cpu_before
    with deployed_cluster(0) as conn:
        deploy(conn)
        sleeping = sleeps_per_request(conn)
    # Without polling the frontend sleeps twice a request (for the reply, for the next
    # request) and the replica once; with it, almost never.
    assert sleeping >= 1.5, (polling, sleeping)
    assert polling <= 0.5, (polling, sleeping)
    assert after_errors >= 0.8, after_errors
    assert idle_cpu < 0.1, f"an idle cluster took {idle_cpu:.2f} s of CPU in 1 s"


@MANY_CORES
def test_off_on_a_single_core():
    """A process allowed one core would hold the core that the one it waits for needs."""
    one_core = subprocess.run(
        [sys.executable, "-c", "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
                               "from clipper import busy_poll; print(busy_poll.window_seconds(200))"],
        capture_output=True, text=True, check=True)
    assert float(one_core.stdout) == 0.0
    assert busy_poll.window_seconds(200) == 200e-6 and busy_poll.window_seconds(0) == 0.0
