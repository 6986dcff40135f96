"""Clipper's metrics: counters, ratios, meters and histograms, reported as Clipper's JSON.

The document has Clipper's shape (docs/protocol.md, 7.1 The /metrics document): categories
``counters``, ``ratio_counters``, ``meters``, ``histograms``, each a list of single-key
objects, every leaf value a string, pretty-printed. Updates are plain attribute writes so
that they cost almost nothing on the prediction path.

Several processes' metrics add up: ``MetricSet.snapshot()`` is one process's as JSON-able
data, ``MetricSet.merged(snapshots)`` their sum (counters, meters and ratios add, histograms
pool their samples).
"""
import itertools
import json
import math
import random
import sys
import time
from typing import Dict, List

METER_TICK_SECONDS = 5.0
_EWMA_MINUTES = (1, 5, 15)


def _fmt(value: float) -> str:
    """As Clipper wrote its numbers: at full precision (a double's shortest exact text), a
    whole number without a decimal point."""
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)


_TINY = sys.float_info.min


def _open_unit() -> float:
    """A uniform draw in (0, 1): a logarithm is taken of it."""
    return random.random() or _TINY


def _percentile(values: List[float], rank: float):
    """Clipper's rule: the value at the 1-based position rank * (n + 1) of the sorted
    ``values``, interpolated between its neighbours, within the first and the last."""
    position = min(max(rank * (len(values) + 1), 1.0), float(len(values)))
    below, fraction = int(position) - 1, position - int(position)
    if fraction == 0:
        return values[below]
    return values[below] + fraction * (values[below + 1] - values[below])


class Counter:
    def __init__(self):
        self.count = 0

    def report(self) -> dict:
        return {"count": str(self.count)}

    def state(self) -> dict:
        return {"count": self.count}

    def absorb(self, state: dict) -> None:
        self.count += state["count"]


class RatioCounter:
    def __init__(self):
        self.numerator = 0
        self.denominator = 0

    def report(self) -> dict:
        ratio = self.numerator / self.denominator if self.denominator else float("nan")
        return {"ratio": _fmt(ratio)}

    def state(self) -> dict:
        return {"numerator": self.numerator, "denominator": self.denominator}

    def absorb(self, state: dict) -> None:
        self.numerator += state["numerator"]
        self.denominator += state["denominator"]


class Meter:
    """Event rate since creation, plus 1/5/15-minute moving averages ticked every 5 s."""

    def __init__(self):
        self.count = 0
        self._created = time.monotonic()
        self._counted_at_tick = 0
        self._rates = [-1.0, -1.0, -1.0]

    def tick(self) -> None:
        instant = (self.count - self._counted_at_tick) / METER_TICK_SECONDS
        self._counted_at_tick = self.count
        for i, minutes in enumerate(_EWMA_MINUTES):
            alpha = 1 - math.exp(-METER_TICK_SECONDS / (60 * minutes))
            old = self._rates[i]
            self._rates[i] = instant if old < 0 else old + alpha * (instant - old)

    def state(self) -> dict:
        elapsed = max(time.monotonic() - self._created, 1e-9)
        return {"count": self.count, "rate": self.count / elapsed, "rates": list(self._rates)}

    def report(self) -> dict:
        state = self.state()
        return {"unit": "events per second", "rate": _fmt(state["rate"]),
                "rate_1min": _fmt(state["rates"][0]), "rate_5min": _fmt(state["rates"][1]),
                "rate_15min": _fmt(state["rates"][2])}


class MeterSum(Meter):
    """Several processes' meters added up; a moving average not yet ticked (-1) adds nothing."""

    def __init__(self):
        super().__init__()
        self._rate = 0.0

    def absorb(self, state: dict) -> None:
        self.count += state["count"]
        self._rate += state["rate"]
        self._rates = [mine if theirs < 0 else max(mine, 0.0) + theirs
                       for mine, theirs in zip(self._rates, state["rates"])]

    def state(self) -> dict:
        return {"count": self.count, "rate": self._rate, "rates": list(self._rates)}


class Histogram:
    """Summary statistics over a uniform reservoir sample of the observed values. Once the
    reservoir is full, Li's Algorithm L draws how many values to skip before the next one
    replaces a sample, so a value that replaces none costs a comparison: a batch of a
    thousand queries records its latency a thousand times, as Clipper counts, at the price
    of the few that are kept."""

    def __init__(self, unit: str, reservoir_size: int = 4096):
        self.unit = unit
        self.reservoir_size = reservoir_size
        self.samples: List[float] = []
        self.seen = 0
        self._weight = 1.0              # Algorithm L's W
        self._next_kept = 0             # the count of values seen at which one is next kept

    def observe(self, value: float, times: int = 1) -> None:
        """``value`` seen ``times`` times (once for each prediction of a request, or for
        each query of a batch)."""
        samples, size = self.samples, self.reservoir_size
        if len(samples) < size:
            taken = min(times, size - len(samples))
            samples.extend(itertools.repeat(value, taken))
            self.seen += taken
            times -= taken
            if len(samples) == size:
                self._skip(self.seen)
        last = self.seen + times
        while self._next_kept <= last and len(samples) == size:
            samples[int(random.random() * size)] = value
            self._skip(self._next_kept)
        self.seen = last

    def _skip(self, after: int) -> None:
        self._weight *= math.exp(math.log(_open_unit()) / self.reservoir_size)
        skipped = math.log(_open_unit()) / math.log(max(1.0 - self._weight, _TINY))
        self._next_kept = after + int(skipped) + 1

    def report(self) -> dict:
        values = sorted(self.samples)
        if not values:
            stats = dict.fromkeys(("min", "max", "mean", "std_dev", "p50", "p95", "p99"), 0)
        else:
            mean = sum(values) / len(values)
            variance = sum((v - mean) ** 2 for v in values) / len(values)
            stats = {"min": values[0], "max": values[-1], "mean": mean,
                     "std_dev": math.sqrt(variance), "p50": _percentile(values, 0.5),
                     "p95": _percentile(values, 0.95), "p99": _percentile(values, 0.99)}
        return {"unit": self.unit, "size": str(len(values)),
                **{key: _fmt(value) for key, value in stats.items()}}

    def state(self) -> dict:
        return {"unit": self.unit, "samples": self.samples, "seen": self.seen}

    def absorb(self, state: dict) -> None:
        """Pool the samples (a merged histogram only reports: it may exceed the reservoir)."""
        self.samples.extend(state["samples"])
        self.seen += state["seen"]


class MetricSet:
    CATEGORIES = (("counters", Counter), ("ratio_counters", RatioCounter),
                  ("meters", Meter), ("histograms", Histogram))

    def __init__(self):
        self.metrics: Dict[str, object] = {}

    def _get(self, name: str, factory):
        metric = self.metrics.get(name)
        if metric is None:
            metric = self.metrics[name] = factory()
        return metric

    def counter(self, name: str) -> Counter:
        return self._get(name, Counter)

    def ratio(self, name: str) -> RatioCounter:
        return self._get(name, RatioCounter)

    def meter(self, name: str) -> Meter:
        return self._get(name, Meter)

    def histogram(self, name: str, unit: str) -> Histogram:
        return self._get(name, lambda: Histogram(unit))

    def remove_prefix(self, prefix: str) -> None:
        for name in [n for n in self.metrics if n.startswith(prefix)]:
            del self.metrics[name]

    def tick(self) -> None:
        for metric in self.metrics.values():
            if isinstance(metric, Meter):
                metric.tick()

    def report(self) -> dict:
        document = {}
        for category, kind in self.CATEGORIES:
            entries = [{name: metric.report()} for name, metric in sorted(self.metrics.items())
                       if isinstance(metric, kind)]
            if entries:
                document[category] = entries
        return document

    def report_json(self) -> bytes:
        return json.dumps(self.report(), indent=4).encode()

    def snapshot(self) -> dict:
        """Every metric's state as JSON-able data: {name: [category, state]}."""
        categories = {kind: category for category, kind in self.CATEGORIES}
        return {name: [categories[type(metric)], metric.state()] for name, metric in self.metrics.items()}

    @classmethod
    def merged(cls, snapshots: List[dict]) -> "MetricSet":
        """The sum of several processes' snapshots, for reporting."""
        total = cls()
        for snapshot in snapshots:
            for name, (category, state) in snapshot.items():
                metric = total.metrics.get(name)
                if metric is None:
                    metric = total.metrics[name] = _EMPTY[category](state)
                metric.absorb(state)
        return total


_EMPTY = {"counters": lambda state: Counter(), "ratio_counters": lambda state: RatioCounter(),
          "meters": lambda state: MeterSum(), "histograms": lambda state: Histogram(state["unit"])}
