"""clipper_admin 0.4.1's ``clipper_admin.metrics``: metrics a model reports from its predict
function, exported beside Clipper's own on the cluster's metrics port::

    import clipper_admin.metrics as metrics

    def predict(inputs):
        metrics.add_metric("custom_batch_size", "Histogram", "inputs per call", [1, 8, 64])
        metrics.report_metric("custom_batch_size", len(inputs))
        ...

In a replica of the local backend each series carries the replica's ``model_name``,
``model_version`` and ``replica`` labels (see clipper.container.metrics); elsewhere the calls
are checked and kept in the process. 0.4.1 started a Redis server on import to carry them;
importing this starts nothing.
"""
from clipper.container.metrics import DEFAULT_BUCKETS, REPLICA
from clipper_admin.exceptions import ClipperException

__all__ = ["add_metric", "report_metric", "DEFAULT_BUCKETS"]


def add_metric(name, metric_type, description, buckets=DEFAULT_BUCKETS):
    """Add a Prometheus metric of ``metric_type`` 'Counter', 'Gauge', 'Histogram' or
    'Summary'; ``buckets`` are a Histogram's. Adding a name again does nothing."""
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
    except (TypeError, ValueError) as error:
        raise ClipperException(f"Cannot report {val!r} to metric {name!r}: {error}") from None
