"""Both sides of Clipper's RPC v3 against an independent implementation of the protocol.

(b) A model container that speaks as Clipper's Python container does serves predictions
    through our query frontend.
(c) Our model container answers a peer that plays Clipper's query frontend.
Neither side uses clipper.rpc.codec: the frames come from clipper_rpc.py, written from
docs/protocol.md, 5 Model-container RPC.
"""
import base64
import os
import shutil
import struct
import subprocess
import sys
import threading
import time

import pytest
import zmq

import clipper_rpc as rpc
from clipper.container import runtime
from clipper.cluster.cluster_dir import MARKER_ENV
from clipper_admin.deployers.deployer_utils import save_python_function
from helpers import ROOT, local_cluster, prediction

PORTS = dict(query_port=25337, management_port=25338, rpc_port=25700, metric_port=25390)
PEER_PORT = 25800
IDLE_HEARTBEAT_SECONDS = 5      # Clipper's container: SOCKET_POLLING_TIMEOUT_MILLIS


# ---- (b) a container as Clipper's Python container, against our query frontend ----
class ClipperStyleContainer(threading.Thread):
    """A DEALER that registers and answers batches frame for frame as Clipper's container."""

    def __init__(self, address, name, version, input_type, predict):
        super().__init__(daemon=True)
        self.address, self.input_type, self.predict = address, input_type, predict
        self.registration = rpc.new_container(name, version, input_type)
        self.batches = []               # sizes of the batches served
        self.error = None               # what went wrong in the thread, for the test to report
        self.stopping = threading.Event()

    def run(self):
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.address)
        try:
            self._serve(socket)
        except Exception as error:      # noqa: BLE001 - surfaced by the fixture
            self.error = error
        finally:
            socket.close()

    def _serve(self, socket):
        # Short polls, so that the test can stop the thread.
        rpc.serve(socket, self.registration, self._answer, lambda: not self.stopping.is_set(),
                  poll_millis=100, heartbeat_seconds=IDLE_HEARTBEAT_SECONDS)

    def _answer(self, message):
        # Clipper's container raises on a batch of another type.
        assert message["input_type"] == rpc.TYPE_CODES[self.input_type], message
        self.batches.append(len(message["inputs"]))
        return [self.predict(i).encode() for i in message["inputs"]]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="compat-rpc", **PORTS) as conn:
        yield conn


@pytest.fixture
def container(cluster):
    """start(name, input_type, predict): app and containerless model ``name``, served by us."""
    started = []

    def start(name, input_type, predict):
        cluster.register_application(name, input_type, "default", 2_000_000)
        cluster.register_model(name, "1", input_type)      # containerless: we bring our own
        cluster.link_model_to_app(name, name)
        peer = ClipperStyleContainer(f"tcp://127.0.0.1:{PORTS['rpc_port']}", name, "1",
                                     input_type, predict)
        peer.start()
        started.append(peer)
        deadline = time.monotonic() + 10
        while f"{name}:1:0" not in cluster.get_all_model_replicas():
            assert peer.error is None and time.monotonic() < deadline, \
                f"the container did not register: {peer.error!r}"
            time.sleep(0.05)
        return peer

    yield start
    for peer in started:
        peer.stopping.set()
        peer.join(5)
        assert peer.error is None, f"the Clipper-style container failed: {peer.error!r}"


def unpack(code, raw):
    return struct.unpack("<%d%s" % (len(raw) // struct.calcsize(code), code), raw)


def test_clipper_style_container_serves_doubles(cluster, container):
    peer = container("raw-sum", "doubles", lambda raw: repr(sum(unpack("d", raw))))
    single = prediction(cluster, "raw-sum", {"input": [1.0, 2.0, 3.5]})
    assert single["output"] == 6.5 and single["default"] is False
    batch = prediction(cluster, "raw-sum", {"input_batch": [[1, 1], [2.5], [0.25, 0.25, 0.5]]})
    assert [b["output"] for b in batch["batch_predictions"]] == [2.0, 2.5, 1.0]
    assert sum(peer.batches) == 4


@pytest.mark.parametrize("input_type, query, predict_one, expected", [
    ("strings", "hello clipper", lambda raw: raw.decode().upper(), "HELLO CLIPPER"),
    ("ints", [7, -3, 100], lambda raw: str(max(unpack("i", raw))), 100),
    ("floats", [0.5, 0.25], lambda raw: str(sum(unpack("f", raw))), 0.75),
    ("bytes", base64.b64encode(b"\x00\xff\x10").decode(), lambda raw: raw.hex(), "00ff10"),
])
def test_clipper_style_container_serves_each_input_type(cluster, container, input_type, query,
                                                        predict_one, expected):
    app = f"raw-{input_type}"
    container(app, input_type, predict_one)
    assert prediction(cluster, app, {"input": query})["output"] == expected


# ---- (c) our container, against a peer playing Clipper's query frontend ----
class ClipperStyleFrontend:
    """A ROUTER bound as Clipper's RPC service: answers heartbeats as Clipper does."""

    def __init__(self, port):
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # The previous test's peer closed this port, but ZeroMQ's I/O thread releases it a
        # moment after close() returns.
        deadline = time.monotonic() + 5
        while True:
            try:
                self.socket.bind(f"tcp://127.0.0.1:{port}")
                break
            except zmq.ZMQError as error:
                if error.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.registered = {}            # identity -> its new-container message
        self.next_msg_id = 0            # Clipper counts batches from 0

    def receive(self, timeout_seconds=20):
        """The next message that is not a heartbeat; heartbeats are answered on the way."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and self.socket.poll(remaining * 1000), "the container said nothing"
            identity, *frames = self.socket.recv_multipart()
            message = rpc.parse_from_container(frames)
            if message["type"] != "heartbeat":
                return identity, message
            # Unknown identity: ask who it is; a registered one is kept alive.
            kind = rpc.KEEPALIVE if identity in self.registered else rpc.REQUEST_CONTAINER_METADATA
            self.socket.send_multipart([identity, *rpc.heartbeat_reply(kind)])

    def accept_container(self):
        identity, message = self.receive()
        assert message["type"] == "new_container", message
        self.registered[identity] = message
        return identity, message

    def predict(self, identity, input_type, inputs):
        msg_id = self.next_msg_id
        self.next_msg_id += 1
        self.socket.send_multipart([identity, *rpc.prediction_request(msg_id, input_type, inputs)])
        _, reply = self.receive()
        assert reply["type"] == "response" and reply["msg_id"] == rpc.u32(msg_id), reply
        return reply["outputs"]

    def close(self):
        self.socket.close()


def describe_batch(batch):
    """The model: what it was handed, per input (Clipper's container shapes, docs/protocol.md 5.5)."""
    return [f"{batch.dtype}{list(batch.shape)} {item!r}" for item in batch]


@pytest.fixture
def our_container(clipper_state_dir):
    """start(input_type): our model container for ``describe_batch``, dialling a Clipper-style peer."""
    frontend = ClipperStyleFrontend(PEER_PORT)
    model_dir = save_python_function("peer-model", describe_batch)
    processes = []

    def start(input_type):
        env = {**os.environ, "PYTHONPATH": str(ROOT), MARKER_ENV: str(clipper_state_dir / "peer"),
               "CLIPPER_MODEL_NAME": "peer-model", "CLIPPER_MODEL_VERSION": "4",
               "CLIPPER_MODEL_PATH": model_dir, "CLIPPER_INPUT_TYPE": input_type,
               "CLIPPER_IP": "127.0.0.1", "CLIPPER_PORT": str(PEER_PORT)}
        processes.append(subprocess.Popen([sys.executable, "-m", "clipper", "model-container"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        frontend.container = processes[-1]
        return frontend

    yield start
    frontend.close()
    shutil.rmtree(model_dir)
    for process in processes:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        assert process.returncode in (0, -15), stderr.decode()[-2000:]


def test_our_container_registers_and_serves_doubles(our_container):
    frontend = our_container("doubles")
    identity, registration = frontend.accept_container()
    assert registration == {"type": "new_container", "name": "peer-model", "version": "4",
                            "input_type": rpc.TYPE_CODES["doubles"], "rpc_version": 3}
    # Unequal sizes: a 1-D object array of rows; equal sizes: one 2-D float64 array.
    uneven = frontend.predict(identity, "doubles", [struct.pack("<3d", 1, 2, 3),
                                                    struct.pack("<1d", 42)])
    assert uneven == [b"object[2] array([1., 2., 3.])", b"object[2] array([42.])"]
    even = frontend.predict(identity, "doubles", [struct.pack("<2d", 1, 2),
                                                  struct.pack("<2d", 0.5, 0.25)])
    assert even == [b"float64[2, 2] array([1., 2.])", b"float64[2, 2] array([0.5 , 0.25])"]
    assert len(frontend.registered) == 1    # one session throughout


def test_our_container_stops_at_once_when_idle(our_container):
    """SIGTERM ends an idle container's wait for the next message: it does not wait for the
    poll to time out (up to a heartbeat interval), which held up every stop_all."""
    frontend = our_container("doubles")
    frontend.accept_container()
    time.sleep(0.2)             # past its registration, into the wait for the next message
    frontend.container.terminate()
    terminated = time.monotonic()
    assert frontend.container.wait(10) in (0, -15)
    assert time.monotonic() - terminated < runtime.HEARTBEAT_SECONDS / 2


def test_our_container_serves_strings(our_container):
    frontend = our_container("strings")
    identity, registration = frontend.accept_container()
    assert registration["input_type"] == rpc.TYPE_CODES["strings"]
    outputs = frontend.predict(identity, "strings", ["héllo".encode(), b"", b"clipper"])
    assert outputs == [b"object[3] b'h\\xc3\\xa9llo'", b"object[3] b''", b"object[3] b'clipper'"]
