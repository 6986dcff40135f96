"""clipper_admin 0.4.1's metrics.client: ``add_metric`` and ``report_metric``.

What raises is what raised in 0.4.1: an unknown type, a report to a name never added, a
value that is not a number (float()'s own error). Anything else (a name Prometheus refuses,
too many metrics or buckets, a negative count, no prometheus_client in the replica's
interpreter) is logged by the replica and that metric left out, as 0.4.1's metric server
did, so that the model's predictions go on. A name added again is left as it was, whatever
its type.
"""
from clipper.container.metrics import DEFAULT_BUCKETS, REPLICA
from clipper_admin.exceptions import ClipperException

__all__ = ["add_metric", "report_metric"]


def add_metric(name, metric_type, description, buckets=DEFAULT_BUCKETS):
    """Add a Prometheus metric of ``metric_type`` 'Counter', 'Gauge', 'Histogram' or
    'Summary'; ``buckets`` are a Histogram's. Adding a name again does nothing. A Counter is
    served as ``<name>_total`` (unless its name ends so), as Prometheus clients name counters
    today; 0.4.1's client served the name as given."""
    try:
        REPLICA.add(name, metric_type, description, buckets)
    except ValueError as error:
        raise ClipperException(f"Cannot add metric {name!r}: {error}") from None


def report_metric(name, val):
    """Report ``val`` (a number) to the metric ``name``: a Counter counts it, a Gauge is set
    to it, a Histogram or Summary observes it."""
    try:
        REPLICA.report(name, val)
    except KeyError:
        raise ClipperException(f"{name} has not been added. Please use clipper_admin.metrics.add_metric "
                               "to add this metric") from None
