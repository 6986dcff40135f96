"""Predictions on a real local cluster: every input type, batches, bad input, failing models."""
import base64
import http.client
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from clipper_admin.deployers import python as python_deployer
from helpers import predict, prediction, total

SLO_MICROS = 2_000_000


def int_total(xs):
    return [str(int(sum(x))) for x in xs]


def lengths(xs):
    return [str(len(x)) for x in xs]


def shout(xs):
    # Strings arrive as bytes, as in Clipper's Python container.
    return ['"%s"' % x.decode().upper() for x in xs]


def echo(xs):
    return [x.decode() for x in xs]


def says_default(xs):
    return ['{"default": true}' for _ in xs]


SLOW_INPUT = 1000.0          # picky takes 0.3 s over it: its replica is busy meanwhile


def picky(xs):
    if any(x[0] == SLOW_INPUT for x in xs):
        time.sleep(0.3)
    if any(x[0] < 0 for x in xs):
        raise ValueError("negative inputs are not supported")
    return [str(x[0]) for x in xs]


MODELS = {
    # app/model name: (input type, function)
    "doubles-app": ("doubles", total),
    "floats-app": ("floats", total),
    "ints-app": ("ints", int_total),
    "bytes-app": ("bytes", lengths),
    "strings-app": ("strings", shout),
    "picky-app": ("doubles", picky),
    "says-default-app": ("doubles", says_default),
    "echo-app": ("strings", echo),
}


@pytest.fixture(scope="module")
def cluster(clipper_conn):
    for name, (input_type, func) in MODELS.items():
        # picky's batches take whatever is queued (up to 8), not the adaptive size's 1 or 2.
        python_deployer.create_endpoint(clipper_conn, name, input_type, func, default_output="-1.0",
                                        slo_micros=SLO_MICROS, batch_size=8 if name == "picky-app" else -1)
    return clipper_conn


@pytest.mark.parametrize("app, query, output", [
    ("doubles-app", [1.5, 2.5, 3.0], 7.0),
    ("floats-app", [0.5, 0.25], 0.75),
    ("ints-app", [1, 2, 3, 4], 10),
    ("bytes-app", base64.b64encode(b"hello").decode(), 5),
    ("strings-app", "hello", "HELLO"),
])
def test_single_prediction_of_each_input_type(cluster, app, query, output):
    response = predict(cluster, app, {"input": query})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == output and body["default"] is False
    assert list(body) == ["query_id", "output", "default"]


@pytest.mark.parametrize("app, batch, outputs", [
    ("doubles-app", [[1.0, 2.0], [3.0], [4.0, 4.0, 4.0]], [3.0, 3.0, 12.0]),
    ("ints-app", [[1], [2, 2]], [1, 4]),
    ("strings-app", ["a", "bc"], ["A", "BC"]),
    ("bytes-app", [base64.b64encode(b"x").decode(), base64.b64encode(b"xyz").decode()], [1, 3]),
])
def test_batch_predictions_come_back_in_order(cluster, app, batch, outputs):
    response = predict(cluster, app, {"input_batch": batch})
    assert response.status_code == 200, response.text
    answers = response.json()["batch_predictions"]
    assert [a["output"] for a in answers] == outputs
    assert len({a["query_id"] for a in answers}) == len(batch)


def test_an_output_nested_too_deep_to_embed_is_answered_as_a_string(cluster):
    """orjson reads JSON 1,024 levels deep but writes 254: such an output was read, failed
    to be written, and its query was never answered."""
    deep = "[" * 300 + "]" * 300
    assert predict(cluster, "echo-app", {"input": "[[1]]"}).json()["output"] == [[1]]
    response = predict(cluster, "echo-app", {"input_batch": ["[2]", deep]})
    assert response.status_code == 200, response.text
    assert [answer["output"] for answer in response.json()["batch_predictions"]] == [[2], deep]


def test_a_batch_whose_answer_would_exceed_max_output_size_gets_413(cluster):
    """A 64 KiB default output repeated for each of 10,000 inputs made a 656 MB answer from a
    50 KB request (2 GB of the frontend's memory, its event loop held for 2 s)."""
    cluster.register_application("big-default", "doubles", "x" * 65536, SLO_MICROS)   # not linked
    few = predict(cluster, "big-default", {"input_batch": [[1.0]] * 10})
    assert few.status_code == 200 and len(few.json()["batch_predictions"]) == 10
    many = predict(cluster, "big-default", {"input_batch": [[1.0]] * 10_000}, timeout=30)
    assert many.status_code == 413, many.status_code
    assert many.json()["cause"] == ("The answer to this batch would be larger than 67108864 bytes "
                                    "(max_output_size): send it in smaller batches")
    assert predict(cluster, "doubles-app", {"input": [1.0, 2.0]}).json()["output"] == 3.0


def test_batch_of_one_and_empty_batch(cluster):
    assert predict(cluster, "doubles-app", {"input_batch": [[2.0]]}).json()["output"] == 2.0
    assert predict(cluster, "doubles-app", {"input_batch": []}).json() == {"batch_predictions": []}


@pytest.mark.parametrize("payload, complaint", [
    (b"{oops", "not valid JSON"),
    ({"inputs": [1.0]}, "required keys input or input_batch"),
    ({"input": "text"}, "expected type Array"),
    ({"input": [1.0, "two"]}, "is not of type double"),
    ({"input": [1.0], "version": {"v": 1}}, "version expected type String"),
])
def test_bad_input_gets_400_and_the_cluster_keeps_serving(cluster, payload, complaint):
    if isinstance(payload, bytes):
        response = requests.post(f"http://{cluster.get_query_addr()}/doubles-app/predict",
                                 data=payload, timeout=10)
    else:
        response = predict(cluster, "doubles-app", payload)
    assert response.status_code == 400
    assert response.json()["error"] == "Json error"
    assert complaint in response.json()["cause"]
    assert predict(cluster, "doubles-app", {"input": [1.0, 1.0]}).json()["output"] == 2.0


def test_unknown_app_and_route_get_404_with_a_reason(cluster):
    response = predict(cluster, "no-such-app", {"input": [1.0]})
    assert response.status_code == 404
    assert "No application named 'no-such-app'" in response.json()["cause"]
    response = requests.get(f"http://{cluster.get_query_addr()}/what", timeout=10)
    assert response.status_code == 404 and "POST /<application>/predict" in response.json()["cause"]
    # Routed as sent, as Clipper did: percent-decoded, these reached doubles-app's predict
    # route past a proxy whose rules looked at the path as sent.
    host, port = cluster.get_query_addr().split(":")
    for disguised in ("/doubles-app%2Fpredict", "/%64oubles-app/predict"):   # sent as written
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("POST", disguised, b'{"input": [1.0]}', {"Content-Type": "application/json"})
        assert connection.getresponse().status == 404, disguised
        connection.close()


def test_a_wrong_method_on_a_route_gets_405_with_allow(cluster):
    addr = cluster.get_query_addr()
    for method, path, allowed in (("GET", "/doubles-app/predict", "POST"), ("PUT", "/doubles-app/update/", "POST"),
                                  ("POST", "/metrics", "GET, HEAD"), ("DELETE", "/openapi.json", "GET, HEAD")):
        response = requests.request(method, f"http://{addr}{path}", timeout=10)
        assert response.status_code == 405 and response.headers["Allow"] == allowed
        assert response.json() == {"error": "Method not allowed",
                                   "cause": f"{method} is not allowed on {path}: use {allowed}"}


def test_version_pinning(cluster):
    assert predict(cluster, "doubles-app", {"input": [1.0], "version": "1"}).json()["output"] == 1.0
    response = predict(cluster, "doubles-app", {"input": [1.0], "version": "9"})
    assert response.status_code == 400
    assert response.json() == {"error": "Query processing error",
                               "cause": "Requested version: 9 does not exist for model: doubles-app"}


def test_a_pinned_version_is_looked_up_before_the_input(cluster):
    """Clipper's query frontend looked a pinned version up before it read the inputs
    (query_frontend.hpp decode_and_handle_predict): a version that does not exist is the error
    even when the input is wrong or missing too; an existing one leaves the input's error."""
    for body in ({"input": "x", "version": "9"}, {"version": "9"}, {"input_batch": [["x"]], "version": 9}):
        response = predict(cluster, "doubles-app", body)
        assert response.status_code == 400
        assert response.json() == {"error": "Query processing error",
                                   "cause": "Requested version: 9 does not exist for model: doubles-app"}
    response = predict(cluster, "doubles-app", {"input": "x", "version": "1"})
    assert response.status_code == 400 and response.json()["error"] == "Json error"
    assert "JSON key input expected type Array" in response.json()["cause"]


def test_a_pinned_version_of_another_input_type_is_refused(cluster):
    """Links check input types, but a pinned version was only looked up: a strings app reached
    its model's doubles version, whose replica read the string's bytes as a number."""
    cluster.register_application("pin-app", "strings", "none", SLO_MICROS)
    cluster.register_model("pinned", "1", "strings")
    cluster.register_model("pinned", "2", "doubles")
    cluster.set_model_version("pinned", "1")
    cluster.link_model_to_app("pin-app", "pinned")
    response = predict(cluster, "pin-app", {"input": "abcdefgh", "version": "2"})
    assert response.status_code == 400
    assert response.json() == {"error": "Query processing error", "cause": (
        "Requested version: 2 of model: pinned takes doubles, not strings as application pin-app does")}
    assert predict(cluster, "pin-app", {"input": "abcdefgh", "version": "1"}).json()["default"] is True


def test_a_model_that_raises_gets_an_error_and_keeps_serving(cluster):
    response = predict(cluster, "picky-app", {"input": [-1.0]})
    assert response.status_code == 500
    assert response.json()["error"] == "Model error"
    assert "ValueError: negative inputs are not supported" in response.json()["cause"]
    assert predict(cluster, "picky-app", {"input": [5.0]}).json()["output"] == 5.0


def test_each_answer_of_a_batch_a_model_failed_on_is_still_a_prediction(cluster):
    """A Clipper client reads output and default of every element: the failed ones carry the
    app's default output, with the model's error beside it (they had no output key)."""
    response = predict(cluster, "picky-app", {"input_batch": [[1.0], [-2.0]]})
    assert response.status_code == 200, response.text
    ok, failed = response.json()["batch_predictions"]
    assert (ok["output"], ok["default"]) == (1.0, False)
    assert list(failed) == ["query_id", "output", "default", "default_explanation", "error", "cause"]
    assert (failed["output"], failed["default"], failed["error"]) == (-1.0, True, "Model error")
    assert "ValueError: negative inputs are not supported" in failed["cause"]


def test_one_clients_bad_input_fails_only_its_own_answer_in_a_batch_with_others(cluster):
    """A model that raised on one input answered the whole batch with its error: under load,
    the queries batched with one client's bad input all got its 500. While the replica is
    busy, the three inputs below queue up and reach it as one batch."""
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(predict, cluster, "picky-app", {"input": [SLOW_INPUT]})
        time.sleep(0.1)
        response = predict(cluster, "picky-app", {"input_batch": [[11.0], [-12.0], [13.0]]})
        assert busy.result().json()["output"] == SLOW_INPUT
    assert response.status_code == 200, response.text
    first, failed, third = response.json()["batch_predictions"]
    assert (first["output"], first["default"], third["output"], third["default"]) == (11.0, False, 13.0, False)
    assert "error" not in first and "error" not in third
    assert (failed["default"], failed["error"]) == (True, "Model error")
    assert "ValueError: negative inputs are not supported" in failed["cause"]


def test_base64_without_its_padding_is_read_as_clipper_read_it(cluster):
    unpadded = base64.b64encode(b"hello").decode().rstrip("=")
    assert unpadded != base64.b64encode(b"hello").decode()
    assert predict(cluster, "bytes-app", {"input": unpadded}).json()["output"] == 5


def test_app_without_model_answers_default_at_once(cluster):
    cluster.register_application("lonely-app", "doubles", "0.0", 10_000_000)
    started = time.monotonic()
    body = predict(cluster, "lonely-app", {"input": [1.0]}).json()
    assert time.monotonic() - started < 2          # not the 10 s objective
    assert body["default"] is True and body["output"] == 0.0
    assert body["default_explanation"] == "No connected models found for query"


def test_trailing_slash_and_feedback(cluster):
    addr = cluster.get_query_addr()
    assert requests.post(f"http://{addr}/doubles-app/predict/", json={"input": [3.0]},
                         timeout=10).json()["output"] == 3.0
    response = requests.post(f"http://{addr}/doubles-app/update",
                             json={"uid": 0, "input": [1.0], "label": 1.0}, timeout=10)
    assert response.status_code == 200 and response.text == "Feedback received? 1"
    assert requests.post(f"http://{addr}/doubles-app/update", json={"uid": "x"},
                         timeout=10).status_code == 400


def test_metrics_report_clippers_shape(cluster):
    predict(cluster, "doubles-app", {"input": [1.0, 2.0]})
    document = requests.get(f"http://{cluster.get_query_addr()}/metrics", timeout=10).json()
    counters = {k: v for entry in document["counters"] for k, v in entry.items()}
    histograms = {k: v for entry in document["histograms"] for k, v in entry.items()}
    assert int(counters["app:doubles-app:num_predictions"]["count"]) >= 1
    assert int(counters["model:doubles-app:1:num_predictions"]["count"]) >= 1
    assert int(histograms["app:doubles-app:prediction_latency"]["size"]) >= 1
    assert document == cluster.inspect_instance() or "counters" in cluster.inspect_instance()


def metrics_by_name(conn) -> dict:
    """{category: {metric name: figures}} of the query frontend's /metrics."""
    return {category: {name: figures for entry in entries for name, figures in entry.items()}
            for category, entries in conn.inspect_instance().items()}


def test_metrics_are_reported_from_registration_at_zero(cluster):
    """As Clipper's, an application's metrics are there from its registration and a model
    version's from its deploy, at zero: a dashboard (or inspect_instance()["histograms"]) of
    a cluster that has not served yet finds them."""
    cluster.register_application("quiet-app", "doubles", "-1.0", 100000)
    python_deployer.deploy_python_closure(cluster, "quiet-model", "1", "doubles", total)
    try:
        metrics = metrics_by_name(cluster)
        assert metrics["counters"]["app:quiet-app:num_predictions"] == {"count": "0"}
        assert metrics["counters"]["model:quiet-model:1:num_predictions"] == {"count": "0"}
        assert metrics["ratio_counters"]["app:quiet-app:default_prediction_ratio"] == {"ratio": "nan"}
        assert metrics["ratio_counters"]["model:quiet-model:1:cache_hit_ratio"] == {"ratio": "nan"}
        assert {"app:quiet-app:prediction_throughput", "model:quiet-model:1:prediction_throughput"} \
            <= set(metrics["meters"])
        for name in ("app:quiet-app:prediction_latency", "model:quiet-model:1:prediction_latency",
                     "model:quiet-model:1:batch_size", "internal:rpc_request_queueing_delay"):
            assert name in metrics["histograms"], name
        assert metrics["histograms"]["app:quiet-app:prediction_latency"]["size"] == "0"
    finally:
        cluster.unregister_application("quiet-app")
        cluster.stop_models(["quiet-model"])


def test_each_model_version_reports_its_cache_hit_ratio(cluster):
    """Clipper's model:<name>:<version>:cache_hit_ratio: the first query of an input misses,
    the same input again is answered from the prediction cache."""
    python_deployer.create_endpoint(cluster, "cached-app", "doubles", total, slo_micros=SLO_MICROS)
    try:
        for _ in range(4):
            assert prediction(cluster, "cached-app", {"input": [1.0, 2.0]})["output"] == 3.0
        batch = prediction(cluster, "cached-app", {"input_batch": [[1.0, 2.0], [5.0]]})
        assert [answer["output"] for answer in batch["batch_predictions"]] == [3.0, 5.0]
        ratios = metrics_by_name(cluster)["ratio_counters"]
        assert ratios["model:cached-app:1:cache_hit_ratio"] == {"ratio": repr(4 / 6)}    # 4 of 6 inputs, at full precision
        queueing = metrics_by_name(cluster)["histograms"]["internal:rpc_request_queueing_delay"]
        assert int(queueing["size"]) >= 2 and queueing["unit"] == "microseconds"
    finally:
        cluster.unregister_application("cached-app")
        cluster.stop_models(["cached-app"])


def test_a_removed_application_leaves_the_metrics(cluster):
    def app_metrics():
        document = requests.get(f"http://{cluster.get_query_addr()}/metrics", timeout=10).json()
        return [name for group in document.values() for entry in group for name in entry
                if name.startswith("app:short-lived:")]
    cluster.register_application("short-lived", "doubles", "-1.0", 100000)
    predict(cluster, "short-lived", {"input": [1.0]})
    assert app_metrics()
    cluster.unregister_application("short-lived")
    assert app_metrics() == []


def test_latencies_are_measured_in_microseconds_not_whole_milliseconds(cluster):
    """The event loop's clock counts whole milliseconds; latencies of a fast model must not
    all read 0 or 1000 us."""
    for value in range(20):
        predict(cluster, "doubles-app", {"input": [float(value), 0.25]})
    document = requests.get(f"http://{cluster.get_query_addr()}/metrics", timeout=10).json()
    histograms = {k: v for entry in document["histograms"] for k, v in entry.items()}
    for name in ("app:doubles-app:prediction_latency", "model:doubles-app:1:prediction_latency"):
        # min and max are whole microseconds, as Clipper's; p50 may fall between two samples
        figures = [float(histograms[name][key]) for key in ("min", "p50", "max")]
        assert figures[0].is_integer() and figures[2].is_integer(), f"{name}: {figures} us"
        assert 0 < figures[1] < 1_000_000 and any(figure % 1000 for figure in figures), f"{name}: {figures} us"


def test_prometheus_endpoint_has_the_same_figures(cluster):
    predict(cluster, "doubles-app", {"input": [1.0, 2.0]})
    text = requests.get(f"http://{cluster.get_metric_addr()}/metrics", timeout=10).text
    gauges = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    document = requests.get(f"http://{cluster.get_query_addr()}/metrics", timeout=10).json()
    counters = {k: v for entry in document["counters"] for k, v in entry.items()}
    assert float(gauges["app_doubles_app_num_predictions_count"]) == \
        float(counters["app:doubles-app:num_predictions"]["count"])
    assert "model_doubles_app_1_batch_size_p99" in gauges


def test_apps_whose_gauge_names_clash_leave_the_prometheus_text_valid(cluster):
    """hello-world and hello_world both make app_hello_world_* gauges; a name twice made
    the whole text invalid (Prometheus refuses such a scrape)."""
    for name in ("clash-app", "clash_app"):
        cluster.register_application(name, "doubles", "0", SLO_MICROS)
    text = requests.get(f"http://{cluster.get_metric_addr()}/metrics", timeout=10).text
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert "app_clash_app_num_predictions_count" in types
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)[:5]
    list(text_string_to_metric_families(text))        # parses


def test_an_output_that_reads_default_is_counted_as_the_models(cluster):
    """Whether an answer was the default travels with it; the text of an output does not count."""
    def default_ratio():
        document = requests.get(f"http://{cluster.get_query_addr()}/metrics", timeout=10).json()
        ratios = {k: v for entry in document["ratio_counters"] for k, v in entry.items()}
        return ratios["app:says-default-app:default_prediction_ratio"]["ratio"]
    body = predict(cluster, "says-default-app", {"input_batch": [[1.0], [2.0]]}).json()
    assert [p["output"] for p in body["batch_predictions"]] == [{"default": True}] * 2
    assert all(p["default"] is False for p in body["batch_predictions"])
    assert float(default_ratio()) == 0.0
