"""The replicas' own metrics on the metrics port: Clipper 0.4.1's clipper_mc_* and what a
model adds with clipper_admin.metrics, per replica, checked as Clipper's
integration-tests/clipper_metric_docker.py checks them (/api/v1/targets, /api/v1/series)."""
import logging
import os
import signal
import time

import psutil
import pytest
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import clipper_admin.metrics as metrics
from clipper.container.metrics import REPLICA
from clipper_admin import ClipperException
from clipper_admin.deployers import python as python_deployer
from helpers import local_cluster, prediction, wait_for

PORTS = dict(query_port=21337, management_port=21338, rpc_port=27000, metric_port=21390)
# Clipper's metrics_config.yaml, "Model Container": the series its test looks for
CLIPPER_SERIES = ["clipper_mc_pred_total", "clipper_mc_end_to_end_latency_ms_sum",
                  "clipper_mc_recv_time_ms_sum", "clipper_mc_parse_time_ms_sum",
                  "clipper_mc_handle_time_ms_sum"]


def careless_sum(xs):
    """Metric mistakes that 0.4.1's metric server logged while the model went on serving."""
    metrics.add_metric("custom-dashed", "Gauge", "a name Prometheus refuses")
    metrics.report_metric("custom-dashed", 1)
    metrics.add_metric("custom_down", "Counter", "counted down")
    metrics.report_metric("custom_down", -1)
    metrics.add_metric("custom_unsorted", "Histogram", "unsorted buckets", [10, 5, 1])
    metrics.report_metric("custom_unsorted", 3)
    metrics.add_metric("custom_described", "Gauge", 5)                # a description that is not text
    metrics.report_metric("custom_described", len(xs))
    metrics.add_metric("internal_aggregate_num_predictions", "Summary", "a frontend gauge's name")
    metrics.report_metric("internal_aggregate_num_predictions", 1)
    return [str(sum(x)) for x in xs]


def gauge_named_total(xs):
    metrics.add_metric("custom_clash_total", "Gauge", "the name of counted_sum's counter custom_clash")
    metrics.report_metric("custom_clash_total", 7)
    return [str(sum(x)) for x in xs]


def counted_sum(xs):
    metrics.add_metric("custom_inputs", "Counter", "inputs this replica summed")
    metrics.add_metric("custom_input_length", "Histogram", "doubles per input", [1, 10, 100])
    metrics.report_metric("custom_inputs", len(xs))
    metrics.add_metric("custom_clash", "Counter", "served as custom_clash_total")
    metrics.report_metric("custom_clash", 1)
    for x in xs:
        metrics.report_metric("custom_input_length", len(x))
    return [str(sum(x)) for x in xs]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster("metrics-cluster", **PORTS) as conn:
        python_deployer.create_endpoint(conn, "counted", "doubles", counted_sum, num_replicas=2)
        yield conn


def metric_url(conn, path):
    return f"http://{conn.get_metric_addr()}{path}"


def samples(conn):
    text = requests.get(metric_url(conn, "/metrics"), timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def series(conn, name):
    answer = requests.get(metric_url(conn, "/api/v1/series"), params={"match[]": name}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]


def predictions_by_replica(conn):
    return {s.labels["replica"]: s.value for s in samples(conn) if s.name == "clipper_mc_pred_total"}


def total_of(conn, name):
    return sum(s.value for s in samples(conn) if s.name == name)


def replica_process(replica_name):
    for process in psutil.process_iter():
        try:
            if process.environ().get("CLIPPER_REPLICA_NAME") == replica_name:
                return process
        except psutil.Error:
            continue
    raise AssertionError(f"no process of replica {replica_name}")


def test_each_replica_reports_clippers_container_metrics_from_its_start(cluster):
    for name in CLIPPER_SERIES:
        found = series(cluster, name)
        assert len(found) == 2, (name, found)        # one series per replica, as Clipper's test wants
        assert {s["model_name"] for s in found} == {"counted"} and {s["model_version"] for s in found} == {"1"}
    targets = requests.get(metric_url(cluster, "/api/v1/targets"), timeout=10).json()
    assert targets["status"] == "success"
    active = targets["data"]["activeTargets"]
    assert len(active) == 3 and all(t["health"] == "up" for t in active)      # frontend + 2 replicas


def test_predictions_are_counted_by_the_replicas_with_the_models_own_metrics(cluster):
    before = total_of(cluster, "clipper_mc_pred_total")
    for value in range(6):       # one client: each query is a batch of its own
        assert prediction(cluster, "counted", {"input": [float(value)] * 12})["output"] == value * 12
    wait_for(lambda: total_of(cluster, "clipper_mc_pred_total") == before + 6, 5,
             "the replicas' files counting the 6 predictions")
    assert total_of(cluster, "custom_inputs_total") >= 6
    lengths = {s.labels["le"]: s.value for s in samples(cluster)
               if s.name == "custom_input_length_bucket" and s.labels["replica"]}
    assert lengths and "10.0" in lengths
    handled = total_of(cluster, "clipper_mc_handle_time_ms_count")
    assert handled >= 6 and total_of(cluster, "clipper_mc_handle_time_ms_sum") > 0


def test_a_replica_restarted_in_place_takes_up_its_series_from_zero(cluster):
    for value in range(6):
        prediction(cluster, "counted", {"input": [float(value)]})
    wait_for(lambda: sum(predictions_by_replica(cluster).values()) >= 6, 5, "the predictions counted")
    busy = max(predictions_by_replica(cluster).items(), key=lambda item: item[1])[0]
    os.kill(replica_process(busy).pid, signal.SIGKILL)       # the supervisor starts another in its place
    wait_for(lambda: predictions_by_replica(cluster).get(busy) == 0, 30, "the restarted replica's series at zero")
    assert len(predictions_by_replica(cluster)) == 2


def test_series_of_replicas_that_are_gone_are_not_served(cluster):
    directory = cluster.cm.cluster.path / "replica-metrics"
    stale = directory / "model-gone_1-0.prom"
    stale.write_text('clipper_mc_pred_total{model_name="gone",model_version="1",replica="model-gone_1-0"} 5.0\n')
    os.utime(stale, (time.time() - 60, time.time() - 60))    # not rewritten for a minute: its replica is gone
    assert "gone" not in {s["model_name"] for s in series(cluster, "clipper_mc_pred_total")}
    assert not stale.exists()
    cluster.set_num_replicas("counted", 1)                   # a replica that stops takes its series at once
    wait_for(lambda: len(predictions_by_replica(cluster)) == 1, 15, "one replica's series left")


def test_the_prometheus_api_refuses_what_it_does_not_serve(cluster):
    for params in ({}, {"match[]": 'up{job="x"}'}, {"match[]": "rate(x[5m])"}):
        answer = requests.get(metric_url(cluster, "/api/v1/series"), params=params, timeout=10)
        assert answer.status_code == 400 and answer.json()["status"] == "error", answer.text
    query = requests.get(metric_url(cluster, "/api/v1/query"), params={"query": "up"}, timeout=10)
    assert query.status_code == 404 and "Prometheus server" in query.json()["error"]
    assert series(cluster, '{__name__="clipper_mc_pred_total"}') == series(cluster, "clipper_mc_pred_total")
    assert requests.post(metric_url(cluster, "/metrics"), timeout=10).status_code == 405


def test_metric_mistakes_of_a_model_are_logged_and_its_predictions_go_on(cluster):
    python_deployer.create_endpoint(cluster, "careless", "doubles", careless_sum)
    python_deployer.create_endpoint(cluster, "clashing", "doubles", gauge_named_total)
    for value in range(3):
        assert prediction(cluster, "careless", {"input": [float(value)]})["output"] == value
        assert prediction(cluster, "clashing", {"input": [float(value)]})["output"] == value
    wait_for(lambda: series(cluster, "custom_described"), 5, "the kept metric of careless")
    text = requests.get(metric_url(cluster, "/metrics"), timeout=10).text
    families = list(text_string_to_metric_families(text))
    owners = {}
    for family in families:     # valid text: each series name belongs to one family
        for sample in family.samples:
            assert owners.setdefault(sample.name, family.name) == family.name, sample.name
    values = {sample.name: sample.value for family in families for sample in family.samples}
    assert "custom_unsorted_count" not in values and "custom_dashed" not in values
    assert values["custom_down_total"] == 0             # the count down was left out
    # the frontend's gauge of that name alone
    assert series(cluster, "internal_aggregate_num_predictions_count") == [
        {"__name__": "internal_aggregate_num_predictions_count"}]
    # two models' metrics of one series name: one is served (the other is logged as left out)
    assert len({s["model_name"] for s in series(cluster, "custom_clash_total")}) == 1


def test_the_metrics_directory_is_read_as_untrusted(cluster):
    """A model can write there (in Docker through the volume): nothing it puts there may
    block the frontend, be followed elsewhere, or break the served text."""
    directory = cluster.cm.cluster.path / "replica-metrics"
    elsewhere = directory.parent / "planted.txt"
    elsewhere.write_text('clipper_mc_pred_total{model_name="planted",model_version="1",replica="p"} 9.0\n')
    os.mkfifo(directory / "fifo.prom")
    (directory / "link.prom").symlink_to(elsewhere)
    (directory / "folder.prom").mkdir()
    (directory / "garbage.prom").write_bytes(b"\x00\xff not { prometheus\n" * 100)
    (directory / "huge.prom").write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    replica_file = next(directory.glob("model-counted_1-*.prom"))
    (directory / "spoof.prom").write_bytes(replica_file.read_bytes())     # another replica's series
    try:
        started = time.monotonic()
        for path in ("/metrics", "/api/v1/targets"):
            assert requests.get(metric_url(cluster, path), timeout=5).status_code == 200
        assert time.monotonic() - started < 4
        assert "planted" not in {s["model_name"] for s in series(cluster, "clipper_mc_pred_total")}
        found = series(cluster, "clipper_mc_pred_total")
        assert len(found) == len({s["replica"] for s in found})             # each series once
        targets = requests.get(metric_url(cluster, "/api/v1/targets"), timeout=10).json()["data"]["activeTargets"]
        assert len(targets) == len({t["labels"]["instance"] for t in targets})
        assert prediction(cluster, "counted", {"input": [2.0]})["output"] == 2.0
    finally:
        for name in ("fifo.prom", "link.prom", "garbage.prom", "huge.prom", "spoof.prom"):
            (directory / name).unlink()
        (directory / "folder.prom").rmdir()
        elsewhere.unlink()


def test_metrics_are_checked_where_they_are_added(caplog):
    with pytest.raises(ClipperException, match="Metric type"):
        metrics.add_metric("custom_kind", "Meter", "no such type")
    with pytest.raises(ClipperException, match="has not been added"):
        metrics.report_metric("custom_never_added", 1)
    metrics.add_metric("custom_gauge", "Gauge", "set")
    metrics.add_metric("custom_gauge", "Counter", "added again: ignored, as 0.4.1 did")
    with pytest.raises(ClipperException, match="Metric type"):
        metrics.add_metric("custom_gauge", "Bogus", "the type is checked first, as in 0.4.1")
    metrics.report_metric("custom_gauge", -2.5)
    with pytest.raises(ValueError):                     # float()'s own error, as in 0.4.1
        metrics.report_metric("custom_gauge", "high")
    for rate_limit in logging.getLogger("clipper.container.metrics").filters:
        rate_limit._window_start = float("-inf")        # other tests' lines do not count here
    with caplog.at_level(logging.WARNING, "clipper.container.metrics"):
        metrics.add_metric("custom latency", "Gauge", "a name Prometheus refuses: left out")
        metrics.report_metric("custom latency", 1)      # ignored, as 0.4.1's server did
        metrics.add_metric("custom_fine", "Histogram", "too fine to scrape: left out", list(range(100)))
        metrics.report_metric("custom_fine", 1)
    assert "'custom latency' is left out" in caplog.text and "'custom_fine' is left out" in caplog.text
    kept = {sample.name: (family.type, sample.value)
            for family in text_string_to_metric_families(generate_latest(REPLICA.registry).decode())
            for sample in family.samples}
    assert kept["custom_gauge"] == ("gauge", -2.5)      # still the Gauge it was first added as
    assert not [name for name in kept if name.startswith(("custom latency", "custom_fine"))]
