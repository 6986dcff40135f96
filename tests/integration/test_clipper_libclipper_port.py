"""Clipper 0.4.1's libclipper unit tests, ported to checks of our cluster seen from outside.

Ported from src/libclipper/test/ of ucbrise/clipper (identical at tag v0.4.1):
json_util_test.cpp, base64_test.cpp, data_serialization_tests.cpp,
selection_policies_test.cpp and persistent_state_test.cpp. Clipper tested its C++ helpers
directly; we check what those helpers decided for a user or a Clipper component:

- the REST answers of /<app>/predict (JSON typing, batches, malformed bodies, error texts);
- what a model container receives over RPC. Two peers stand in for Clipper's containers,
  both speaking the frames of tests/compat/clipper_rpc.py (written from the protocol, not
  from our code): ``ClipperStyleContainer`` hands its model the numpy arrays Clipper's
  Python container made of them; ``RecordingPeer`` records every request frame by frame
  (its parser checks the header sizes against the frames);
- the default-output selection policy (default, default_explanation, the state in Redis DB 1);
- the prediction cache (hits, versions, eviction).

Where our README documents a deliberate difference (integers accepted as doubles, strict
base64, the space in "Array but found", ...), the check follows our documentation.
"""
import base64
import hashlib
import json
import random
import string
import struct
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
import redis
import requests

from helpers import ROOT, local_cluster, wait_for

sys.path.insert(0, str(ROOT / "tests" / "compat"))
import clipper_rpc as rpc  # noqa: E402

PORTS = dict(query_port=26337, management_port=26338, rpc_port=26700, metric_port=26390)
CACHE_BYTES = 64 * 1024
SLO_MICROS = 10_000_000        # long: the machine is shared, and answers must be the model's
DEFAULT_OUTPUT = "4.3"         # selection_policies_test.cpp's default output
SLO_MISSED = "Failed to retrieve a prediction response within the specified latency SLO"
NO_MODELS = "No connected models found for query"


# ---- the peers ----------------------------------------------------------------------------
# What Clipper's Python container (containers/python/rpc.py, docs/protocol.md 5) hands its
# model: the elements of each input as numpy values of the type's dtype; strings as an
# object array of their bytes; a batch whose inputs have equal sizes as one (n, size) array,
# any other batch as an object array of 1-D arrays.
CLIPPER_DTYPES = {0: np.int8, 1: np.int32, 2: np.float32, 3: np.float64}


def as_clipper_container_gives(message):
    inputs = message["inputs"]
    if message["input_type"] == rpc.TYPE_CODES["strings"]:
        batch = np.empty(len(inputs), dtype=object)
        batch[:] = inputs
        return batch
    rows = [np.frombuffer(raw, dtype=CLIPPER_DTYPES[message["input_type"]]) for raw in inputs]
    if len({len(row) for row in rows}) == 1:
        return np.stack(rows)
    batch = np.empty(len(rows), dtype=object)
    batch[:] = rows
    return batch


class ClipperStyleContainer(rpc.ContainerThread):
    """A Python model container as Clipper's behaves (frames of tests/compat/clipper_rpc.py,
    inputs as ``as_clipper_container_gives``) serving ``predict`` (one input -> one str);
    every batch its model is handed is recorded as (dtype, shape, rows). As Clipper's
    container, it fails on a request of another input type than it announced."""

    def __init__(self, port, name, version, input_type, predict):
        super().__init__(f"tcp://127.0.0.1:{port}", rpc.new_container(name, version, input_type))
        self.code = rpc.TYPE_CODES[input_type]
        self.predict = predict
        self.batches = []

    def answer(self, message):
        if message["input_type"] != self.code:
            raise AssertionError(f"a request of type {message['input_type']}, not {self.code}")
        batch = as_clipper_container_gives(message)
        rows = [bytes(x) if isinstance(x, bytes) else np.array(x) for x in batch]
        self.batches.append((str(batch.dtype), tuple(batch.shape), rows))
        return [self.predict(row).encode() for row in rows]

    def rows(self):
        return [row for _, _, rows in self.batches for row in rows]


class RecordingPeer(rpc.ContainerThread):
    """A container that speaks as Clipper's (tests/compat/clipper_rpc.py), announcing
    ``announced_type``; it records each prediction request (type code and input frames,
    checked against the header by rpc.parse_from_clipper) and answers each input with
    ``output(raw)`` after ``delay`` seconds."""

    def __init__(self, port, name, version, announced_type, output, delay=0.0):
        self.announced = threading.Event()    # the frontend asked for metadata and got it
        super().__init__(f"tcp://127.0.0.1:{port}",
                         _Announcing(rpc.new_container(name, version, announced_type), self.announced))
        self.output, self.delay = output, delay
        self.requests = []
        self.evaluations = Counter()          # raw input -> times the model computed it

    def answer(self, message):
        self.requests.append(message)
        if self.delay:
            time.sleep(self.delay)
        self.evaluations.update(message["inputs"])
        return [self.output(raw).encode() for raw in message["inputs"]]


class _Announcing(list):
    """The NewContainer frames, noting when rpc.serve sends them."""

    def __init__(self, frames, event):
        super().__init__(frames)
        self.event = event

    def __iter__(self):
        self.event.set()
        return super().__iter__()


# ---- the cluster and the applications -------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="libclipper-port", cache_size=CACHE_BYTES, **PORTS) as conn:
        yield conn


@pytest.fixture
def serve(cluster):
    """serve(name, input_type, peer_class, *args, ...): an application ``name`` linked to a
    containerless model ``name``:``version``, served by a peer of ours; returns the peer."""
    peers = []

    def start(name, input_type, peer_class, *args, version="1", default_output=DEFAULT_OUTPUT,
              slo_micros=SLO_MICROS, announced_type=None, new_app=True, wait=True, **kwargs):
        if new_app:
            cluster.register_application(name, input_type, default_output, slo_micros)
        cluster.register_model(name, version, input_type)
        if new_app:
            cluster.link_model_to_app(name, name)
        if peer_class is RecordingPeer:
            peer = RecordingPeer(PORTS["rpc_port"], name, version, announced_type or input_type,
                                 *args, **kwargs)
        else:
            peer = peer_class(PORTS["rpc_port"], name, version, input_type, *args, **kwargs)
        peer.start()
        peers.append(peer)
        if wait:
            wait_for(lambda: any(r.startswith(f"{name}:{version}:")
                                 for r in cluster.get_all_model_replicas())
                     or peer.error is not None, 15, f"a replica of {name}:{version} registering")
            assert peer.error is None, f"the container failed: {peer.error!r}"
        return peer

    yield start
    for peer in peers:
        peer.stop()


def post(cluster, app, body, timeout=30):
    """POST raw bytes (or a document) to the application's predict route."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return requests.post(f"http://{cluster.get_query_addr()}/{app}/predict", data=body,
                         headers={"Content-Type": "application/json"}, timeout=timeout)


def answer_of(cluster, app, body):
    response = post(cluster, app, body)
    assert response.status_code == 200, response.text
    return response.json()


def json_error(response):
    """The cause of a /predict JSON error, checked to be Clipper's shape (query_frontend.hpp
    388-399: 400, {"error": "Json error", "cause": "Error parsing JSON: ... Expected JSON
    schema: ..."})."""
    assert response.status_code == 400, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == "Json error", body
    assert body["cause"].startswith("Error parsing JSON: "), body
    assert ". Expected JSON schema: " in body["cause"], body
    return body["cause"][len("Error parsing JSON: "):body["cause"].index(". Expected JSON schema: ")]


def tagged(raw):
    """A model output that output sniffing keeps as a string (hex digits alone may be JSON)."""
    return "h:" + hashlib.sha256(raw).hexdigest()[:16]


# ---- json_util_test.cpp and data_serialization_tests.cpp: what a model receives ---------------
# json_util_test.cpp TestCorrectJsonValues / TestCorrectJsonArrays values, and
# data_serialization_tests.cpp's type codes (datatypes.hpp DataType), as Clipper's Python
# container hands them to the model (containers/python/rpc.py input_type_to_dtype).
EACH_TYPE = [
    ("doubles", [1.4, 2.23, 3.243242, 0.3223424], "float64",
     lambda row: row.tolist() == [1.4, 2.23, 3.243242, 0.3223424]),
    ("floats", [1.4, 2.23, 3.243242, 0.3223424], "float32",
     lambda row: row.tolist() == np.array([1.4, 2.23, 3.243242, 0.3223424], np.float32).tolist()),
    ("ints", [1, 2, 3, 4, -100], "int32", lambda row: row.tolist() == [1, 2, 3, 4, -100]),
    ("strings", "test_string", "object", lambda row: row == b"test_string"),
    ("bytes", base64.b64encode(b"base64 decoded").decode(), "int8",
     lambda row: row.tobytes() == b"base64 decoded"),
]


@pytest.mark.parametrize("input_type, query, dtype, as_sent", EACH_TYPE, ids=[t[0] for t in EACH_TYPE])
def test_each_input_type_reaches_a_clipper_style_container_as_clipper_sent_it(
        cluster, serve, input_type, query, dtype, as_sent):
    """json_util.cpp parse_single_input -> datatypes.cpp PredictionRequest::serialize ->
    containers/python/rpc.py: one input arrives as a 1-row array of its type (a string as
    bytes); a model's plain-text output comes back as a JSON string
    (data_serialization_tests.cpp PredictionResponseDeserialization, "OUTPUT")."""
    app = f"each-{input_type}"
    container = serve(app, input_type, ClipperStyleContainer, lambda row: "OUTPUT")
    answer = answer_of(cluster, app, {"input": query})
    assert answer["output"] == "OUTPUT" and answer["default"] is False, answer
    assert container.error is None, repr(container.error)
    [(got_dtype, shape, [row])] = container.batches
    assert got_dtype == dtype
    assert shape == ((1,) if input_type == "strings" else (1, len(row)))
    assert as_sent(row), row


def _serialization_items(count=500, size=200):
    """data_serialization_tests.cpp get_primitive_data_items: input i holds j % (i + 1) for
    j < 200, so inputs differ (from i = 199 on they are all 0..199)."""
    return [[j % (i + 1) for j in range(size)] for i in range(count)]


SERIALIZED = {
    # input type: (JSON of one input, bytes it must arrive as, Clipper's DataType code)
    "bytes": (lambda item: base64.b64encode(bytes(item)).decode(), bytes, 0),
    "ints": (list, lambda item: struct.pack("<%di" % len(item), *item), 1),
    "floats": (lambda item: [float(x) for x in item], lambda item: struct.pack("<%df" % len(item), *item), 2),
    "doubles": (lambda item: [float(x) for x in item], lambda item: struct.pack("<%dd" % len(item), *item), 3),
}


@pytest.mark.parametrize("input_type", list(SERIALIZED))
def test_a_batch_of_500_inputs_is_serialized_as_clipper_serializes_it(cluster, serve, input_type):
    """data_serialization_tests.cpp Byte/Int/Float/DoubleSerialization (500 inputs of 200
    elements): each request carries the type code, the input count and each input's size in
    bytes, then one frame per input holding exactly its packed elements (datatypes.cpp
    156-200); outputs are matched to inputs by position."""
    to_json, packed, code = SERIALIZED[input_type]
    app = f"serial-{input_type}"
    peer = serve(app, input_type, RecordingPeer, tagged)
    items = _serialization_items()
    answer = answer_of(cluster, app, {"input_batch": [to_json(item) for item in items]})
    outputs = [p["output"] for p in answer["batch_predictions"]]
    assert outputs == [tagged(packed(item)) for item in items]
    assert all(p["default"] is False for p in answer["batch_predictions"])
    assert peer.error is None, repr(peer.error)       # e.g. a header that does not fit its frames
    assert {m["input_type"] for m in peer.requests} == {code}
    received = [raw for m in peer.requests for raw in m["inputs"]]
    assert set(received) == {packed(item) for item in items}


def test_strings_arrive_as_their_utf8_bytes_without_a_terminator(cluster, serve):
    """data_serialization_tests.cpp StringSerialization ("CAT"): a string input is sent as
    its raw bytes (json_util.cpp get_char_array copies GetStringLength bytes, so an escaped
    NUL is kept), type code 4."""
    peer = serve("serial-strings", "strings", RecordingPeer, tagged)
    texts = ["CAT", "DOG", "COW", "h\u00e9llo \u4e16\u754c", "a\u0000b"]
    answer = answer_of(cluster, "serial-strings", {"input_batch": texts})
    assert [p["output"] for p in answer["batch_predictions"]] == [tagged(t.encode()) for t in texts]
    assert peer.error is None, repr(peer.error)
    assert {m["input_type"] for m in peer.requests} == {4}
    assert sorted(raw for m in peer.requests for raw in m["inputs"]) == sorted(t.encode() for t in texts)


def test_equal_sized_inputs_reach_a_clipper_style_model_as_one_2d_array(cluster, serve):
    """containers/python/rpc.py recv_same_lengths: a batch whose inputs have equal sizes is
    one (n, size) array: the 500 inputs of data_serialization_tests.cpp arrive as rows of
    200 float64 each, every distinct input once, and each answer is its own input's."""
    container = serve("serial-real", "doubles", ClipperStyleContainer,
                      lambda row: repr(float(row.sum())))
    items = _serialization_items()
    answer = answer_of(cluster, "serial-real", {"input_batch": [[float(x) for x in i] for i in items]})
    assert [p["output"] for p in answer["batch_predictions"]] == [float(sum(i)) for i in items]
    assert container.error is None, repr(container.error)
    assert all(dtype == "float64" and len(shape) == 2 and shape[1] == 200
               for dtype, shape, _ in container.batches)
    assert {tuple(row.tolist()) for row in container.rows()} == {tuple(map(float, i)) for i in items}


@pytest.mark.parametrize("input_type, empty, good", [
    ("doubles", [], [1.0, 2.0]), ("ints", [], [1, 2]),
    ("bytes", "", base64.b64encode(b"\x01\x02").decode()), ("strings", "", "ab"),
])
def test_an_empty_input_is_answered_and_the_container_keeps_serving(cluster, serve, input_type, empty, good):
    """data_serialization_tests.cpp EmptySerialization: Clipper never serializes a request
    with no input data (datatypes.cpp 156-160 throws length_error), so an all-empty input
    never reached its containers, and the replica that pulled it got no more work (our
    docs/protocol.md 5.3; the protocol reference's pitfall 23). Whatever the empty input
    gets here, it must be an answer within the objective, and a Clipper-style container,
    if it is sent one, must go on serving the next query."""
    app = f"empty-{input_type}"
    container = serve(app, input_type, ClipperStyleContainer, lambda row: repr(len(row)),
                      slo_micros=2_000_000)
    started = time.monotonic()
    response = post(cluster, app, {"input": empty})
    assert response.status_code < 500, response.text
    assert time.monotonic() - started < 6
    answer = answer_of(cluster, app, {"input": good})
    assert container.error is None, f"the container died: {container.error!r}"
    assert answer["default"] is False and answer["output"] == 2, answer


def test_a_replica_of_another_input_type_is_never_sent_inputs_it_would_misread(cluster, serve):
    """data_serialization_tests.cpp RpcPredictionRequestsOnlyAcceptValidInputs: a request
    is built with the replica's own input type and refuses inputs of another
    (datatypes.cpp 125-135 validate_input_type; task_executor.hpp 716-721 builds the request
    from container->input_type_, which the container announced). A replica announcing ints
    for a doubles model must not be handed the doubles' bytes labelled as ints (a model
    would answer from the misread bytes as if it were its prediction)."""
    peer = serve("mistyped", "doubles", RecordingPeer, lambda raw: repr(len(raw)),
                 announced_type="ints", slo_micros=1_000_000, wait=False)
    assert peer.announced.wait(15), "the frontend never asked the container for its metadata"
    # Registered (or, were it refused, 3 s for the refusal): then the query.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any(
            r.startswith("mistyped:1:") for r in cluster.get_all_model_replicas()):
        time.sleep(0.05)
    answer = answer_of(cluster, "mistyped", {"input": [1.5, 2.5]})
    misread = [m for m in peer.requests if m["input_type"] != rpc.TYPE_CODES["doubles"]]
    assert not misread, f"doubles sent to a replica of input type ints: {misread}"
    assert answer["default"] is True, answer


# ---- json_util_test.cpp: typed numbers and type mismatches ------------------------------------
@pytest.fixture(scope="module")
def typed_apps(cluster):
    """One app per input type, each served by a Clipper-style container; the fixture returns
    (cluster, containers by input type)."""
    containers = {}
    for input_type in ("ints", "floats", "doubles", "strings", "bytes"):
        app = f"typed-{input_type}"
        cluster.register_application(app, input_type, DEFAULT_OUTPUT, SLO_MICROS)
        cluster.register_model(app, "1", input_type)
        cluster.link_model_to_app(app, app)
        containers[input_type] = ClipperStyleContainer(
            PORTS["rpc_port"], app, "1", input_type,
            lambda row: json.dumps(row.tolist() if not isinstance(row, bytes) else row.decode("latin-1")))
        containers[input_type].start()
    for input_type in containers:
        wait_for(lambda: any(r.startswith(f"typed-{input_type}:1:") for r in cluster.get_all_model_replicas()),
                 15, f"typed-{input_type} registering")
    yield cluster, containers
    for container in containers.values():
        container.stop()


@pytest.mark.parametrize("input_type, query, received", [
    # TestDoubleIntFormatting: 0.3 is a double, 5 an int.
    ("doubles", [0.3], [0.3]),
    ("ints", [5], [5]),
    # Ours (README "Where we differ"): an integer is accepted where doubles or floats are expected.
    ("doubles", [5], [5.0]),
    ("doubles", [1.2, 3.4, 5, 6.7], [1.2, 3.4, 5.0, 6.7]),     # TestArrayTypeMismatch's array
    ("floats", [5], [5.0]),
    # rapidjson IsInt: the whole int32 range; IsFloat: within +-3.4028234e38.
    ("ints", [2147483647, -2147483648], [2147483647, -2147483648]),
    ("floats", [3.4028234e38, -3.4028234e38], [3.4028234e38, -3.4028234e38]),
])
def test_numbers_of_the_apps_type_are_accepted(typed_apps, input_type, query, received):
    cluster, containers = typed_apps
    answer = answer_of(cluster, f"typed-{input_type}", {"input": query})
    assert answer["default"] is False, answer
    expected = np.array(received, dtype={"ints": np.int32, "floats": np.float32}.get(input_type, np.float64))
    assert answer["output"] == expected.tolist()


@pytest.mark.parametrize("input_type, body", [
    # TestDoubleIntFormatting: a number with a decimal point is not an int.
    ("ints", {"input": [0.3]}),
    ("ints", {"input": [1e2]}),
    # TestArrayTypeMismatch: an int array with a string, a string array with a bool.
    ("ints", {"input": [1, 2, 3, "4"]}),
    ("strings", {"input_batch": ["test1", "phrase2", True]}),
    ("doubles", {"input": [1.5, None]}),
    ("doubles", {"input": [1.5, True]}),
    ("ints", {"input": [2147483648]}),
    ("floats", {"input": [3.5e38]}),
    ("doubles", {"input": "1.0"}),
    ("doubles", {"input": [[1.0]]}),
    ("strings", {"input": ["a"]}),
    ("bytes", {"input": 5}),
    ("doubles", {"input_batch": [1.0, 2.0]}),
    ("doubles", {"input_batch": {"a": [1.0]}}),
    ("doubles", {"input": [1.0], "version": 1.5}),
    ("doubles", {"inputs": [1.0]}),
    ("doubles", {}),
])
def test_inputs_of_the_wrong_type_get_a_json_error(typed_apps, input_type, body):
    """json_util.cpp: every type check throws json_semantic_error, which the query frontend
    answers 400 {"error":"Json error",...} (query_frontend.hpp 394-399); nothing reaches the
    model, and the app keeps serving."""
    cluster, containers = typed_apps
    before = len(containers[input_type].batches)
    json_error(post(cluster, f"typed-{input_type}", body))
    assert len(containers[input_type].batches) == before


# Clipper's texts (json_util.cpp), with the one difference our docs/protocol.md 2.6 documents:
# a space before "but" in "Type mismatch! ... expected type <T> but found type <U>".
CLIPPER_MESSAGES = [
    ("doubles", {"input": "x"}, "Type mismatch! JSON key input expected type Array but found type String"),
    ("strings", {"input": 5}, "Type mismatch! JSON key input expected type String but found type Number"),
    ("bytes", {"input": 5}, "Type mismatch! JSON key input expected type String but found type Number"),
    ("doubles", {"inputs": [1.0]}, "JSON object does not have required keys input or input_batch"),
    ("ints", {"input": [1, 2, 3, "4"]}, "Array input of type String is not of type int"),
    ("doubles", {"input": [1.5, None]}, "Array input of type Null is not of type double"),
    ("strings", {"input_batch": "x"}, "Type mismatch! JSON key input_batch expected type Array but found type String"),
    # json_util.cpp 233-236 (IsInt false for 0.3, and for 2147483648), 211-214 (IsFloat).
    ("ints", {"input": [0.3]}, "Array input of type Number is not of type int"),
    ("ints", {"input": [2147483648]}, "Array input of type Number is not of type int"),
    ("floats", {"input": [3.5e38]}, "Array input of type Number is not of type float"),
    # json_util.cpp 301-304 and 313-315: batch errors say "Array input", not the key name.
    ("doubles", {"input_batch": [1.0]}, "Array input of type Number is not of type array"),
    ("doubles", {"input_batch": [[1.0], ["x"]]}, "Array input of type String is not of type double"),
    ("ints", {"input_batch": [[1], [0.5]]}, "Array input of type Number is not of type int"),
    # json_util.cpp 396-398 and 273-276.
    ("strings", {"input_batch": ["a", 1]}, "Array input of type Number is not of type string"),
    ("bytes", {"input_batch": ["QQ==", 1]}, "PredictionData of type Number is not of type base64-encoded string"),
    # query_frontend.hpp 580-581: "version" must be a string; json_util.cpp 53-56 for Null.
    ("doubles", {"input": [1.0], "version": None}, "Type mismatch! JSON key version expected type String but found type Null"),
]


@pytest.mark.parametrize("input_type, body, message", CLIPPER_MESSAGES,
                         ids=[f"{t}-{json.dumps(b)}" for t, b, _ in CLIPPER_MESSAGES])
def test_type_errors_are_worded_as_clipper_words_them(typed_apps, input_type, body, message):
    """Clipper's text, then (ours) the reason in brackets where there is one to add."""
    cluster, _ = typed_apps
    cause = json_error(post(cluster, f"typed-{input_type}", body))
    assert cause == message or cause.startswith(message + " ("), cause


@pytest.mark.parametrize("body", [
    b'{"input": [1.0', b'{"input": [1.0]} trailing', b'', b'{"input": [1.0,]}', b"{'input': [1.0]}",
    b'{"input": [NaN]}', b'{"input": [01.0]}', b'\xff\xfe{"input": [1.0]}',
    # Valid JSON that is not an object: undefined behaviour in Clipper (pitfall 8), 400 here.
    b'[1.0]', b'"input"', b'null', b'1.0', b'true',
], ids=repr)
def test_malformed_json_gets_a_json_error_and_the_app_keeps_serving(typed_apps, body):
    """json_util.cpp 440-448 parse_json: a body that is not JSON is a json_parse_error, 400
    {"error":"Json error","cause":"Error parsing JSON: ... Expected JSON schema: ..."}."""
    cluster, _ = typed_apps
    json_error(post(cluster, "typed-doubles", body))
    assert answer_of(cluster, "typed-doubles", {"input": [0.5]})["output"] == [0.5]


def test_input_batch_gives_one_prediction_per_input_and_input_wins(typed_apps):
    """json_util.cpp 450-463 parse_inputs: "input" is read when present (input_batch is then
    ignored), else each element of "input_batch" is a query; query_frontend.hpp 533-548: one
    element is answered unwrapped, any other count as {"batch_predictions": [...]}."""
    cluster, _ = typed_apps
    three = answer_of(cluster, "typed-ints", {"input_batch": [[1], [2, 3], [4, 5, 6]]})
    assert [p["output"] for p in three["batch_predictions"]] == [[1], [2, 3], [4, 5, 6]]
    assert len({p["query_id"] for p in three["batch_predictions"]}) == 3
    one = answer_of(cluster, "typed-ints", {"input_batch": [[7]]})
    assert set(one) == {"query_id", "output", "default"} and one["output"] == [7]
    assert answer_of(cluster, "typed-ints", {"input_batch": []}) == {"batch_predictions": []}
    both = answer_of(cluster, "typed-ints", {"input": [8], "input_batch": "ignored"})
    assert both["output"] == [8] and "batch_predictions" not in both


def test_outputs_that_are_not_json_keep_the_answer_valid_json(cluster, serve):
    """json_util_test.cpp TestAddStringPreservesJsonIntegrity ("}}}}", "[[[[["), and
    TestCorrectJsonValues (0.3, -100): query_frontend.hpp 491-504 embeds an output that
    parses as JSON as that value, anything else as an escaped string."""
    serve("echo-out", "strings", RecordingPeer, lambda raw: raw.decode())
    for text, expected in [("[[[[[", "[[[[["), ("}}}}", "}}}}"), ('{"}}}}": "[[[[["}', {"}}}}": "[[[[["}),
                           ("0.3", 0.3), ("-100", -100), ("test_string", "test_string"),
                           ('"quoted"', "quoted"), ("[1.4,2.23,3.243242,0.3223424]", [1.4, 2.23, 3.243242, 0.3223424])]:
        response = post(cluster, "echo-out", {"input": text})
        assert response.status_code == 200, response.text
        assert response.json()["output"] == expected, (text, response.text)
    assert b'"output":0.3,' in post(cluster, "echo-out", {"input": "0.3"}).content


def test_default_outputs_that_are_not_json_keep_the_answer_valid_json(cluster):
    for name, default, expected in [("dflt-brackets", "[[[[[", "[[[[["), ("dflt-braces", "}}}}", "}}}}"),
                                    ("dflt-number", "1.0", 1.0), ("dflt-none", "None", "None")]:
        cluster.register_application(name, "doubles", default, SLO_MICROS)
        answer = answer_of(cluster, name, {"input": [1.0]})
        assert answer["output"] == expected and answer["default"] is True, answer


# ---- query_frontend_tests.cpp: RequestHandler's decoding, answers and feedback ----------------
# Clipper called decode_and_handle_predict/update with a mock query processor; here the same
# bodies go to /predict and /update and the Clipper-style container shows what was decoded.
QUERY_FRONTEND_BODIES = [
    ("ints", '{"input": [1,2,3,4]}', [[1, 2, 3, 4]]),                              # ...InputInts
    ("ints", '{"input_batch": [[1, 2], [10, 20], [100, 200]]}', [[1, 2], [10, 20], [100, 200]]),
    ("doubles", '{"input": [1.4,2.23,3.243242,0.3223424]}', [[1.4, 2.23, 3.243242, 0.3223424]]),
    ("doubles", '{"input_batch": [[1.1, 2.2], [10.1, 20.2], [100.1, 200.2]]}',
     [[1.1, 2.2], [10.1, 20.2], [100.1, 200.2]]),
    ("strings", '{"input": "hello world. This is a test string with punctionation!@#$Y#;}#"}',
     ["hello world. This is a test string with punctionation!@#$Y#;}#"]),
    ("strings", '{"input_batch": [ "this", "is", "a", "test" ]}', ["this", "is", "a", "test"]),
    # TestJsonResponseForSuccessfulPredictionFormattedCorrectly: "uid" is not a key of the
    # schema, and is ignored.
    ("ints", '{"uid": 1, "input": [1,2,3]}', [[1, 2, 3]]),
]


@pytest.mark.parametrize("input_type, body, decoded", QUERY_FRONTEND_BODIES,
                         ids=[b for _, b, _ in QUERY_FRONTEND_BODIES])
def test_clipper_query_frontend_bodies_are_decoded_as_clipper_decoded_them(typed_apps, input_type, body,
                                                                          decoded):
    """TestDecodeCorrectInput{Ints,Doubles,String}[Batch]: each input reaches the model as
    written, one query (one answer) per element of input_batch, in order."""
    cluster, _ = typed_apps
    answer = answer_of(cluster, f"typed-{input_type}", body.encode())
    answers = answer.get("batch_predictions", [answer])
    assert [a["output"] for a in answers] == decoded, answer
    assert all(a["default"] is False for a in answers), answer


def test_clipper_query_frontend_answer_and_error_shapes(typed_apps):
    """TestJsonResponseFor{Successful,Failed}PredictionFormattedCorrectly: query_id an integer,
    output a number when the model's output reads as one, default a boolean; an error's
    "error" and "cause" strings. TestDecodeMalformedJSON's gibberish, TestDecodeMissingJsonField,
    TestDecodeWrongInputType[InBatch] are JSON errors of that shape."""
    cluster, _ = typed_apps
    answer = answer_of(cluster, "typed-ints", b'{"uid": 1, "input": [7]}')
    assert type(answer["query_id"]) is int and type(answer["default"]) is bool, answer
    assert answer["output"] == [7]
    number = answer_of(cluster, "typed-doubles", {"input": []})       # the model answers "[]"
    assert number["output"] == []
    for input_type, body in [("ints", b'{"uid": 1, "input": [1,}'),
                             ("doubles", b'{"uid": 2hkdshfdshffhkj32kjhh{dskjfh32r"3r32'),
                             ("strings", b'dshfdshffhkj32fsd32jk huf32h, 3 } 24j dskjfh32r"3r32'),
                             ("doubles", b'{"other_field": [1.4,2.23,3.243242,0.3223424]}'),
                             ("ints", b'{"uid": 23, "input": [1.4,2.23,3.243242,0.3223424]}'),
                             ("ints", b'{"uid": 23, "input_batch": [[1,2], [3.243242,0.3223424]]}')]:
        response = post(cluster, f"typed-{input_type}", body)
        json_error(response)
        assert set(response.json()) == {"error", "cause"}
        assert all(isinstance(v, str) for v in response.json().values())


def test_clipper_feedback_is_acknowledged_and_takes_a_query_id(typed_apps):
    """TestDecodeCorrectUpdate: a feedback with uid, input and label is acknowledged
    ("Feedback received? 1"); TestDecodeUpdateMissingField: without its label, a JSON error.
    query_processor.cpp update(), like predict(), takes the next query id, so the prediction
    after an acknowledged feedback skips one id, and one after a refused feedback does not."""
    cluster, _ = typed_apps
    url = f"http://{cluster.get_query_addr()}/typed-doubles/update"
    feedback = b'{"uid": 23, "input": [1.4,2.23,3.243242,0.3223424], "label": 1.0}'
    first = answer_of(cluster, "typed-doubles", {"input": [1.0]})["query_id"]
    response = requests.post(url, data=feedback, headers={"Content-Type": "application/json"}, timeout=30)
    assert (response.status_code, response.text) == (200, "Feedback received? 1")
    refused = requests.post(url, data=b'{"uid": 23, "input": [1.4,2.23,3.243242,0.3223424]}',
                            headers={"Content-Type": "application/json"}, timeout=30)
    assert refused.status_code == 400 and "required key: label" in refused.text, refused.text
    assert answer_of(cluster, "typed-doubles", {"input": [1.0]})["query_id"] == first + 2


# ---- base64_test.cpp ------------------------------------------------------------------------
def _random_strings(rng, alphabet, count):
    return [bytes(rng.choice(alphabet) for _ in range(rng.randint(100, 199))) for _ in range(count)]


def test_base64_of_any_bytes_decodes_to_them_with_or_without_padding(cluster, serve):
    """base64_test.cpp: alphanumeric and random byte strings of 100 to 199 bytes, encoded
    with padding and with the padding stripped (Base64::StripPadding), decode to the original
    (json_util_test.cpp TestBase64DecodingYieldsOriginalString: "base64 decoded"); Clipper's
    container hands them to the model as int8 (rpc.py input_type_to_dtype)."""
    rng = random.Random(4096)
    alnum = (string.digits + string.ascii_letters).encode()
    originals = (_random_strings(rng, alnum, 60) + _random_strings(rng, list(range(256)), 60)
                 + [b"base64 decoded"])
    padded = [base64.b64encode(raw).decode() for raw in originals]
    unpadded = [text.rstrip("=") for text in padded]
    assert any(text != stripped for text, stripped in zip(padded, unpadded))
    container = serve("b64", "bytes", ClipperStyleContainer, lambda row: tagged(row.tobytes()))
    for encoded in (padded, unpadded):
        answer = answer_of(cluster, "b64", {"input_batch": encoded})
        assert [p["output"] for p in answer["batch_predictions"]] == [tagged(raw) for raw in originals]
    assert container.error is None, repr(container.error)
    assert {dtype for dtype, _, _ in container.batches} <= {"int8", "object"}


# ---- selection_policies_test.cpp -------------------------------------------------------------
def test_no_candidate_model_answers_the_default_output_at_once(cluster):
    """TestSelectPredictTasksZeroCandidateModels: no task is made, so the query is answered
    with the app's default output (TestCombinePredictionsZeroPredictions), explained
    "No connected models found for query" (query_processor.cpp 78-80), without waiting."""
    cluster.register_application("no-model", "doubles", DEFAULT_OUTPUT, SLO_MICROS)
    started = time.monotonic()
    answer = answer_of(cluster, "no-model", {"input": [1.0]})
    assert time.monotonic() - started < 2.0
    assert answer["output"] == 4.3 and answer["default"] is True, answer
    assert answer["default_explanation"] == NO_MODELS
    batch = answer_of(cluster, "no-model", {"input_batch": [[1.0], [2.0]]})
    assert [(p["output"], p["default"], p["default_explanation"]) for p in batch["batch_predictions"]] \
        == [(4.3, True, NO_MODELS)] * 2


def test_a_linked_model_with_no_replica_answers_the_default_output_at_once(cluster):
    cluster.register_application("no-replica", "doubles", DEFAULT_OUTPUT, SLO_MICROS)
    cluster.register_model("no-replica", "1", "doubles")
    cluster.link_model_to_app("no-replica", "no-replica")
    started = time.monotonic()
    answer = answer_of(cluster, "no-replica", {"input": [1.0]})
    assert time.monotonic() - started < 2.0
    assert (answer["output"], answer["default"], answer["default_explanation"]) == (4.3, True, NO_MODELS)


def test_one_candidate_model_answers_with_its_own_output(cluster, serve):
    """TestSelectPredictTasksOneCandidateModel / TestCombinePredictionsOnePrediction: the one
    model's output ("1.1"), not the default, and no default_explanation."""
    serve("one-model", "doubles", RecordingPeer, lambda raw: "1.1")
    answer = answer_of(cluster, "one-model", {"input": [1.0]})
    assert answer == {"query_id": answer["query_id"], "output": 1.1, "default": False}


def test_no_prediction_within_the_objective_answers_the_default_output(cluster, serve):
    """TestCombinePredictionsZeroPredictions: no output within the latency objective -> the
    default output, explained "Failed to retrieve a prediction response within the specified
    latency SLO" (query_processor.cpp 132-135), at the objective, not when the model is done.
    The late output still fills the cache (task_executor.hpp on_response_recv puts every
    output), so the same input is then answered by the model's output."""
    peer = serve("slow-model", "doubles", RecordingPeer, lambda raw: "1.1", delay=2.5,
                 slo_micros=300_000)
    started = time.monotonic()
    answer = answer_of(cluster, "slow-model", {"input": [2.0]})
    elapsed = time.monotonic() - started
    assert (answer["output"], answer["default"], answer["default_explanation"]) == (4.3, True, SLO_MISSED)
    assert 0.25 <= elapsed < 2.0, elapsed
    wait_for(lambda: sum(peer.evaluations.values()) >= 1, 10, "the slow model answering")
    time.sleep(0.2)
    late = answer_of(cluster, "slow-model", {"input": [2.0]})
    assert (late["output"], late["default"]) == (1.1, False), late


def _state_db(cluster):
    return redis.Redis.from_url(cluster.cm.cluster.settings()["config"]["redis_url"], db=1)


def test_the_default_output_state_is_stored_as_clipper_serializes_it(cluster):
    """DefaultOutputSelectionStateTest.Serialization: the state is {"y_hat": <default>}
    (selection_policies.cpp serialize), kept in Redis DB 1 under "<app>:0:0"
    (persistent_state.cpp 17-25 generate_redis_key; query_frontend.hpp 327-330), and reads
    back as the same default output; /admin/get_state answers it."""
    cluster.register_application("state-app", "doubles", DEFAULT_OUTPUT, SLO_MICROS)
    state = _state_db(cluster).get("state-app:0:0")
    assert state is not None
    assert json.loads(state) == {"y_hat": DEFAULT_OUTPUT}
    got = requests.post(f"http://{cluster.cm.get_admin_addr()}/admin/get_state",
                        json={"app_name": "state-app", "uid": 0}, timeout=10)
    assert got.status_code == 200 and got.text == DEFAULT_OUTPUT
    # management_frontend.hpp 1293-1310: another uid reads uid 0's state; no such app, empty.
    other_uid = requests.post(f"http://{cluster.cm.get_admin_addr()}/admin/get_state",
                              json={"app_name": "state-app", "uid": 7}, timeout=10)
    assert other_uid.status_code == 200 and other_uid.text == DEFAULT_OUTPUT
    unknown = requests.post(f"http://{cluster.cm.get_admin_addr()}/admin/get_state",
                            json={"app_name": "no-such-app", "uid": 0}, timeout=10)
    assert unknown.status_code == 200 and unknown.text == ""


def test_selection_states_come_and_go_with_their_applications(cluster):
    """persistent_state_test.cpp TestManyPutGet / TestPutRemoveGet: one entry per key, each
    readable, gone once removed (ours: delete_app removes the state, README "Where we differ")."""
    db = _state_db(cluster)
    names = [f"many-{i}" for i in range(100)]
    for i, name in enumerate(names):
        cluster.register_application(name, "doubles", f"default-{i}", SLO_MICROS)
    assert [json.loads(db.get(f"{name}:0:0")) for name in names] == [{"y_hat": f"default-{i}"} for i in range(100)]
    for name in names:
        cluster.unregister_application(name)
    assert [db.get(f"{name}:0:0") for name in names] == [None] * 100


def test_app_model_and_replica_metadata_read_back_as_registered(cluster, serve):
    """json_util_test.cpp RedisToJsonTest: an app's input_type, default_output ("1.0", a
    string) and latency_slo_micros (an int); a model's name, version, input type, labels,
    container name and data path; a replica's model_id "<name>:<version>", name, version,
    input type and model_replica_id (an int)."""
    cluster.register_application("meta-app", "doubles", "1.0", 10000)
    app = cluster.get_app_info("meta-app")
    assert (app["input_type"], app["default_output"], app["latency_slo_micros"]) == ("doubles", "1.0", 10000)
    labels = ["ads", "images", "experimental", "other", "labels"]
    added = requests.post(f"http://{cluster.cm.get_admin_addr()}/admin/add_model", timeout=10, json={
        "model_name": "meta-m", "model_version": "1", "labels": labels, "input_type": "doubles",
        "container_name": "clipper/test_container", "model_data_path": "/tmp/models/m/1", "batch_size": -1})
    assert added.status_code == 200, added.text
    model = cluster.get_model_info("meta-m", "1")
    assert (model["model_name"], model["model_version"], model["input_type"], model["labels"],
            model["container_name"], model["model_data_path"]) == (
        "meta-m", "1", "doubles", labels, "clipper/test_container", "/tmp/models/m/1")
    serve("meta-c", "doubles", RecordingPeer, lambda raw: "1.0")
    replica = requests.post(f"http://{cluster.cm.get_admin_addr()}/admin/get_container", timeout=10,
                            json={"model_name": "meta-c", "model_version": "1", "replica_id": 0}).json()
    assert replica == {"model_id": "meta-c:1", "model_name": "meta-c", "model_version": "1",
                       "model_replica_id": 0, "input_type": "doubles"}


# ---- the prediction cache (data_serialization_tests.cpp InputHashTests) -----------------------
def _hash_items(input_type):
    """InputHashTests: item 1 = 0..99, item 2 a copy, item 3 reversed; then item 1 without its
    last element, item 2 with one more, and item 3 reversed back (equal to item 1)."""
    first = list(range(100))
    if input_type == "strings":
        return ("CAT", "CAT", "TAC", "CA", "CATS", "TAC"[::-1])
    extra = 200 if input_type == "bytes" else 500
    items = (first, list(first), first[::-1], first[:-1], first + [extra], first[::-1][::-1])
    if input_type == "bytes":
        return tuple(base64.b64encode(bytes(item)).decode() for item in items)
    if input_type in ("floats", "doubles"):
        return tuple([float(x) for x in item] for item in items)
    return items


@pytest.mark.parametrize("input_type", ["ints", "floats", "doubles", "bytes", "strings"])
def test_the_cache_answers_equal_inputs_and_only_equal_inputs(cluster, serve, input_type):
    """InputHashTests (Int/Float/Double/ByteVectorsHashCorrectly,
    SerializableStringsHashCorrectly): equal contents share a cache entry (the model is not
    asked again), any difference (order, one element less or more) does not."""
    app = f"hash-{input_type}"
    peer = serve(app, input_type, RecordingPeer, tagged)
    first, copy, reverse, shorter, longer, reversed_back = _hash_items(input_type)
    outputs = {}
    for name, item, spaces in [("first", first, 0), ("copy", copy, 1), ("reverse", reverse, 0),
                               ("shorter", shorter, 0), ("longer", longer, 0),
                               ("reversed_back", reversed_back, 2)]:
        # Other spacing: the same input in a body the frontend has not seen.
        body = json.dumps({"input": item}, separators=(",", ":" + " " * spaces)).encode()
        answer = answer_of(cluster, app, body)
        assert answer["default"] is False, answer
        outputs[name] = answer["output"]
    assert outputs["first"] == outputs["copy"] == outputs["reversed_back"]
    assert len({outputs[n] for n in ("first", "reverse", "shorter", "longer")}) == 4
    assert sum(peer.evaluations.values()) == 4, peer.evaluations
    assert max(peer.evaluations.values()) == 1


def test_the_cache_never_mixes_model_versions(cluster, serve):
    """The cache key holds the model version (task_executor.cpp: hash of VersionedModelId
    and input): a new current version computes afresh, the previous one answers from its own
    entries again when it is current or pinned with "version"."""
    v1 = serve("versions", "doubles", RecordingPeer, lambda raw: '"v1"')
    x = {"input": [3.0]}
    assert answer_of(cluster, "versions", x)["output"] == "v1"
    v2 = serve("versions", "doubles", RecordingPeer, lambda raw: '"v2"', version="2", new_app=False)
    assert cluster.get_current_model_version("versions") == "2"
    assert answer_of(cluster, "versions", x)["output"] == "v2"
    assert answer_of(cluster, "versions", {"input": [3.0], "version": "1"})["output"] == "v1"
    cluster.set_model_version("versions", "1")
    assert answer_of(cluster, "versions", x)["output"] == "v1"
    assert answer_of(cluster, "versions", {"input": [3.0], "version": "2"})["output"] == "v2"
    assert sum(v1.evaluations.values()) == 1 and sum(v2.evaluations.values()) == 1


def test_applications_of_one_model_share_its_cache(cluster, serve):
    """The cache key is the model version and the input (task_executor.cpp), not the
    application: a second application linked to the same model is answered from the entry
    the first one's query made (another body, another default output)."""
    peer = serve("shared", "doubles", RecordingPeer, tagged)
    cluster.register_application("shared-too", "doubles", "other default", SLO_MICROS)
    cluster.link_model_to_app("shared-too", "shared")
    first = answer_of(cluster, "shared", {"input": [5.0, 6.0]})
    second = answer_of(cluster, "shared-too", b'{ "input" : [5.0, 6.0] }')
    assert first["default"] is False and second["default"] is False
    assert second["output"] == first["output"]
    assert sum(peer.evaluations.values()) == 1, peer.evaluations


def test_the_cache_evicts_when_full_and_keeps_what_is_used(cluster, serve):
    """The cache is bounded (task_executor.cpp PredictionCache, CLOCK eviction): past its
    capacity an unused entry is evicted and its input computed again; an entry used between
    insertions survives them."""
    peer = serve("evict", "doubles", RecordingPeer, lambda raw: '"e"')
    packed = lambda x: struct.pack("<d", x)  # noqa: E731
    answer_of(cluster, "evict", {"input": [0.5]})
    answer_of(cluster, "evict", {"input": [0.5]})
    assert peer.evaluations[packed(0.5)] == 1
    # Far more than CACHE_BYTES of distinct entries (each holds its input, output and overhead).
    for start in range(0, 1200, 300):
        answer_of(cluster, "evict", {"input_batch": [[1000.0 + i] for i in range(start, start + 300)]})
    answer_of(cluster, "evict", b'{"input":  [0.5]}')
    assert peer.evaluations[packed(0.5)] == 2, "an entry survived 1,200 insertions into a 64 KiB cache"
    # An entry used between insertions stays.
    answer_of(cluster, "evict", {"input": [0.25]})
    for round_ in range(12):
        answer_of(cluster, "evict", {"input_batch": [[5000.0 + 40 * round_ + i] for i in range(40)]})
        answer_of(cluster, "evict", b'{"input":' + b" " * (round_ + 1) + b'[0.25]}')
    assert peer.evaluations[packed(0.25)] == 1
