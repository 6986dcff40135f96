"""The latency and batch-size histograms keep a uniform sample of everything observed."""
import random

from clipper.query_frontend.metrics import Histogram


def test_a_full_reservoir_keeps_a_uniform_sample_of_all_values_seen():
    # Values 0..n-1 observed in order: a sample biased towards the first values (kept while
    # filling) or the last ones (kept by the skips) shows in the share of each quarter.
    random.seed(7)
    size, n, quarters = 512, 40_000, [0, 0, 0, 0]
    for _ in range(20):
        histogram = Histogram("us", reservoir_size=size)
        for value in range(n):
            histogram.observe(value)
        assert histogram.seen == n and len(histogram.samples) == size
        assert len(set(histogram.samples)) == size          # each value kept at most once
        for value in histogram.samples:
            quarters[value * 4 // n] += 1
    shares = [count / (20 * size) for count in quarters]
    assert all(abs(share - 0.25) < 0.02 for share in shares), shares


def test_values_observed_many_times_at_once_are_sampled_as_if_one_by_one():
    # A batch's latency counts once for each of its queries: batches of 32 equal values.
    random.seed(3)
    size, n, quarters = 512, 40_000, [0, 0, 0, 0]
    for _ in range(20):
        histogram = Histogram("us", reservoir_size=size)
        for first in range(0, n, 32):
            histogram.observe(first, 32)
        assert histogram.seen == n and len(histogram.samples) == size
        for value in histogram.samples:
            quarters[value * 4 // n] += 1
    shares = [count / (20 * size) for count in quarters]
    assert all(abs(share - 0.25) < 0.02 for share in shares), shares


def test_clippers_percentiles_are_interpolated_and_numbers_kept_whole():
    histogram = Histogram("queries")
    for value in (16, 53, 104, 113, 185, 202):      # Clipper's metrics_test.cpp
        histogram.observe(value)
    report = histogram.report()
    assert (report["p50"], report["p99"], report["min"]) == ("108.5", "202", "16")
    assert float(report["mean"]) == sum((16, 53, 104, 113, 185, 202)) / 6


def test_the_reservoir_fills_with_the_first_values():
    histogram = Histogram("us", reservoir_size=4)
    for value in (5.0, 1.0, 3.0):
        histogram.observe(value)
    assert histogram.samples == [5.0, 1.0, 3.0]
    assert histogram.report()["max"] == "5" and histogram.report()["size"] == "3"
