"""Both sides of Clipper's RPC v3 against an independent implementation of the protocol.

(b) A model container that speaks as Clipper's Python container does serves predictions
    through our query frontend.
(c) Our model container answers a peer that plays Clipper's query frontend.
"""
import os
import struct
import subprocess
import sys
import threading
import time

import pytest
import requests
import zmq

import clipper_rpc as rpc
from clipper.cluster.registry import MARKER_ENV
from clipper_admin.deployers.deployer_utils import save_python_function
from conftest import ROOT, local_cluster

PORTS = dict(query_port=41337, management_port=41338, rpc_port=47000, metric_port=41390)
PEER_PORT = 47100


class ClipperStyleContainer(threading.Thread):
    """A DEALER that registers and answers batches frame for frame as Clipper's container."""

    def __init__(self, address, name, version, input_type, predict):
        super().__init__(daemon=True)
        self.address, self.predict = address, predict
        self.registration = rpc.new_container(name, version, input_type)
        self.batches = []
        self.stopping = threading.Event()

    def run(self):
        context = zmq.Context.instance()
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.address)
        socket.send_multipart(rpc.heartbeat())
        last_heartbeat = time.monotonic()
        try:
            while not self.stopping.is_set():
                if not socket.poll(100):
                    if time.monotonic() - last_heartbeat > 5:   # as Clipper's container, when idle
                        socket.send_multipart(rpc.heartbeat())
                        last_heartbeat = time.monotonic()
                    continue
                message = rpc.parse_from_clipper(socket.recv_multipart())
                if message["type"] == "heartbeat_reply":
                    if message["heartbeat_type"] == rpc.REQUEST_CONTAINER_METADATA:
                        socket.send_multipart(self.registration)
                    continue
                self.batches.append(len(message["inputs"]))
                outputs = [self.predict(i).encode() for i in message["inputs"]]
                socket.send_multipart(rpc.prediction_response(message["msg_id"], outputs))
        finally:
            socket.close()


def sum_of_doubles(raw):
    return repr(sum(struct.unpack("<%dd" % (len(raw) // 8), raw)))


def shout(raw):
    return raw.decode().upper()


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="compat-rpc", **PORTS) as conn:
        yield conn


@pytest.fixture
def container(cluster):
    started = []

    def start(app, model, input_type, predict):
        cluster.register_application(app, input_type, "default", 2_000_000)
        cluster.register_model(model, "1", input_type)      # containerless: we bring our own
        cluster.link_model_to_app(app, model)
        peer = ClipperStyleContainer(f"tcp://127.0.0.1:{PORTS['rpc_port']}", model, "1",
                                     input_type, predict)
        peer.start()
        started.append(peer)
        deadline = time.monotonic() + 10
        while not any(r["model_name"] == model for r in cluster.get_all_model_replicas(verbose=True)):
            assert time.monotonic() < deadline, "the container did not register"
            time.sleep(0.05)
        return peer

    yield start
    for peer in started:
        peer.stopping.set()
        peer.join(5)


def predict(conn, app, body):
    response = requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_clipper_style_container_serves_doubles_through_our_frontend(cluster, container):
    peer = container("raw-sum", "raw-sum", "doubles", sum_of_doubles)
    single = predict(cluster, "raw-sum", {"input": [1.0, 2.0, 3.5]})
    assert single["output"] == 6.5 and single["default"] is False
    batch = predict(cluster, "raw-sum", {"input_batch": [[1, 1], [2.5], [0.25, 0.25, 0.5]]})
    assert [b["output"] for b in batch["batch_predictions"]] == [2.0, 2.5, 1.0]
    assert sum(peer.batches) == 4


def test_clipper_style_container_serves_strings_through_our_frontend(cluster, container):
    container("raw-shout", "raw-shout", "strings", shout)
    assert predict(cluster, "raw-shout", {"input": "hello clipper"})["output"] == "HELLO CLIPPER"


def test_our_container_answers_a_clipper_style_frontend(clipper_state_dir, tmp_path):
    model_dir = save_python_function("peer-sum", lambda xs: [str(float(x.sum())) for x in xs])
    env = {**os.environ, "PYTHONPATH": str(ROOT), MARKER_ENV: str(clipper_state_dir / "peer"),
           "CLIPPER_MODEL_NAME": "peer-sum", "CLIPPER_MODEL_VERSION": "4",
           "CLIPPER_MODEL_PATH": model_dir, "CLIPPER_INPUT_TYPE": "doubles",
           "CLIPPER_IP": "127.0.0.1", "CLIPPER_PORT": str(PEER_PORT)}
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{PEER_PORT}")
    process = subprocess.Popen([sys.executable, "-m", "clipper", "model-container"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def receive():
        assert router.poll(20_000), "the container said nothing"
        identity, *frames = router.recv_multipart()
        return identity, rpc.parse_from_container(frames)

    try:
        identity, first = receive()
        assert first == {"type": "heartbeat"}
        router.send_multipart([identity, *rpc.heartbeat_reply(rpc.REQUEST_CONTAINER_METADATA)])
        identity, registration = receive()
        assert registration == {"type": "new_container", "name": "peer-sum", "version": "4",
                                "input_type": rpc.TYPE_CODES["doubles"], "rpc_version": 3}
        router.send_multipart([identity, *rpc.heartbeat_reply(rpc.KEEPALIVE)])
        inputs = [struct.pack("<3d", 1, 2, 3), struct.pack("<3d", 0.5, 0.5, 0.5),
                  struct.pack("<1d", 42)]          # unequal sizes: an object array of rows
        router.send_multipart([identity, *rpc.prediction_request(7, "doubles", inputs)])
        while True:
            identity, reply = receive()
            if reply["type"] != "heartbeat":
                break
        assert reply["msg_id"] == rpc.u32(7)
        assert reply["outputs"] == [b"6.0", b"1.5", b"42.0"]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        router.close()
    assert process.returncode in (0, -15), stderr.decode()[-2000:]
