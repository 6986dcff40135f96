"""Several query frontend workers' metrics add up to the cluster's (MetricSet.merged)."""
import orjson

from clipper.query_frontend.metrics import MetricSet


def worker(predictions, defaults, latencies, ticked):
    metrics = MetricSet()
    metrics.counter("app:a:num_predictions").count = predictions
    ratio = metrics.ratio("app:a:default_prediction_ratio")
    ratio.numerator, ratio.denominator = defaults, predictions
    meter = metrics.meter("app:a:prediction_throughput")
    meter.count = predictions
    if ticked:
        meter.tick()
    for latency in latencies:
        metrics.histogram("app:a:prediction_latency", "microseconds").observe(latency)
    return metrics


def fields(document, category):
    return {name: value for entry in document[category] for name, value in entry.items()}


def test_counters_meters_and_ratios_add_and_histograms_pool_their_samples():
    first, second = worker(30, 3, [100, 200], ticked=True), worker(10, 1, [300, 400, 500], ticked=False)
    # Snapshots travel through Redis as JSON.
    snapshots = [orjson.loads(orjson.dumps(w.snapshot())) for w in (first, second)]
    report = MetricSet.merged(snapshots).report()
    assert fields(report, "counters")["app:a:num_predictions"] == {"count": "40"}
    assert fields(report, "ratio_counters")["app:a:default_prediction_ratio"] == {"ratio": "0.1"}
    latency = fields(report, "histograms")["app:a:prediction_latency"]
    assert (latency["size"], latency["min"], latency["max"], latency["mean"]) == ("5", "100", "500", "300")
    meter = fields(report, "meters")["app:a:prediction_throughput"]
    # Only the first worker has ticked its moving average: 30 events in 5 s.
    assert float(meter["rate_1min"]) == 6.0
    assert float(meter["rate"]) > 0
    # The merged report has the same shape as one worker's.
    assert report.keys() == first.report().keys()
