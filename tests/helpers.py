"""What many tests use: the project's root, probes of ports and processes, a real local
cluster for a block, and the sum model with a predict call over REST."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipper.cluster.cluster_dir import cluster_path_of, still_running  # noqa: E402
from clipper.datatypes import InputType  # noqa: E402
from clipper.rpc import auth, codec  # noqa: E402
from clipper_admin import ClipperConnection, LocalContainerManager  # noqa: E402
from clipper_admin.docker.images import local_base_image  # noqa: E402

DEFAULT_PORTS = (1337, 1338, 7000, 1390)


def wait_for(condition, timeout, what, interval=0.05):
    """Until ``condition()`` holds, failing the test after ``timeout`` s; returns the time it did."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(interval)
    return time.monotonic()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def processes_under(base: Path):
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            marker = cluster_path_of(process) or ""
            if marker.startswith(str(base)) and still_running(process):
                found.append(process)
    return found


def all_gone(pids) -> bool:
    """Every one of these processes has exited and let go of its files, ports among them."""
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if still_running(psutil.Process(pid)):
                return False
    return True


@contextlib.contextmanager
def local_cluster(name="test-cluster", query_port=1337, management_port=1338, rpc_port=7000,
                  metric_port=1390, manager_kwargs=None, **start_kwargs):
    """A real local cluster for the duration of the block."""
    manager = LocalContainerManager(cluster_name=name, clipper_query_port=query_port,
                                    clipper_management_port=management_port,
                                    clipper_rpc_port=rpc_port, clipper_metric_port=metric_port,
                                    **(manager_kwargs or {}))
    conn = ClipperConnection(manager)
    conn.start_clipper(**start_kwargs)
    try:
        yield conn
    finally:
        conn.stop_all(graceful=False)


def total(xs):
    """The model most tests deploy: the sum of each input."""
    return [str(sum(x)) for x in xs]


def predict(conn, app, payload, timeout=10, **kwargs):
    """POST ``payload`` to the application's predict route; the response, whatever its status."""
    return requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json=payload,
                         timeout=timeout, **kwargs)


def prediction(conn, app, payload, timeout=10):
    """The JSON answer of a prediction that must succeed."""
    response = predict(conn, app, payload, timeout)
    assert response.status_code == 200, response.text
    return response.json()


def built_local_base(python, unavailable=""):
    """docker/build-local-base.sh's base with ``python``, built if needed; else skip, saying why."""
    local_base = local_base_image(python)
    if local_base is None:
        pytest.skip(f"{unavailable} (no Debian release has Python {python})")
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        pytest.skip(f"{unavailable} (building {local_base} needs root and debootstrap)")
    build = subprocess.run(["sh", str(ROOT / "docker" / "build-local-base.sh"), python],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"could not build {local_base}: {build.stderr[-800:]}")
    return local_base


def rpc_peer(rpc_port, name, version="1", seconds=3.0, curve=None):
    """Connect to the RPC port as a replica of ``name``:``version``, as our containers do;
    return every message the frontend sent it (a registration starts with a request for
    metadata). ``curve``: (the frontend's public key, this peer's secret key)."""
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    if curve:
        auth.present_curve(peer, *curve)
    peer.connect(f"tcp://127.0.0.1:{rpc_port}")
    received, deadline = [], time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if peer.poll(200):
                message = codec.decode_clipper_message(peer.recv_multipart())
                received.append(message)
                if getattr(message, "heartbeat_type", None) == codec.HEARTBEAT_REQUEST_METADATA:
                    peer.send_multipart(codec.encode_new_container(name, version, InputType.DOUBLES))
            else:
                try:
                    peer.send_multipart(codec.encode_heartbeat(), zmq.NOBLOCK)
                except zmq.Again:
                    pass
    finally:
        peer.close(0)
        context.term()
    return received


@contextlib.contextmanager
def raw_rpc_connection(rpc_port, routing_id=b""):
    """A plain TCP connection to the RPC port that has done ZeroMQ's handshake (ZMTP 3.0,
    NULL mechanism, as a DEALER, bringing ``routing_id`` if any): what is sent on it then is
    frames, written as they go, so a test can stream a frame or a message far larger than it
    ever holds in memory."""
    greeting = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)
    ready = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
    if routing_id:
        ready += b"\x08Identity" + len(routing_id).to_bytes(4, "big") + routing_id
    connection = socket.create_connection(("127.0.0.1", rpc_port))
    try:
        connection.sendall(greeting + bytes([0x04, len(ready)]) + ready)
        yield connection
    finally:
        connection.close()


def zmtp_frame_header(size, more=False):
    """The bytes that start a ZMTP frame of ``size`` bytes (its long form)."""
    return bytes([0x02 | (0x01 if more else 0)]) + size.to_bytes(8, "big")
