"""clipper_admin 0.4.1's ``clipper_admin.metrics``: metrics a model reports from its predict
function, exported beside Clipper's own on the cluster's metrics port::

    import clipper_admin.metrics as metrics

    def predict(inputs):
        metrics.add_metric("custom_batch_size", "Histogram", "inputs per call", [1, 8, 64])
        metrics.report_metric("custom_batch_size", len(inputs))
        ...

In a replica each series carries the replica's ``model_name``, ``model_version`` and
``replica`` labels (see clipper.container.metrics). 0.4.1 started a Redis server on import
to carry them; importing this starts nothing.
"""
from clipper_admin.metrics.client import add_metric, report_metric
from clipper_admin.metrics.config import DEFAULT_BUCKETS

__all__ = ["add_metric", "report_metric", "DEFAULT_BUCKETS"]
