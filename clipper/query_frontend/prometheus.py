"""The query frontend's metrics in Prometheus text format, named as Clipper's exporter named them.

Clipper ran a separate exporter container that scraped /metrics and turned every numeric
leaf into a gauge ``<metric>_<field>`` with ``:`` and ``-`` replaced by ``_`` (e.g.
``app_hello_world_prediction_latency_p99``). We serve the same gauges from the frontend
itself, on the metrics port (1390, the exporter's port).
"""
import re

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from clipper.errors import RequestError
from clipper.query_frontend import http

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def gauge_name(metric: str, field: str) -> str:
    return _INVALID.sub("_", f"{metric}_{field}")


class ClipperCollector:
    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        for entries in self.metrics.report().values():
            for entry in entries:
                for metric, fields in entry.items():
                    for field, value in fields.items():
                        try:
                            number = float(value)
                        except ValueError:
                            continue          # e.g. "unit"
                        yield GaugeMetricFamily(gauge_name(metric, field), f"Clipper {metric} {field}",
                                                value=number)


class PrometheusApp(http.Application):
    """GET /metrics on the metrics port, served by the query frontend's own HTTP layer."""

    def __init__(self, metrics):
        """``metrics``: what to report (``report()``): a MetricSet, or the cluster's WorkerMetrics."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClipperCollector(metrics))

    def handle(self, request: http.Request) -> http.Response:
        if request.path != "/metrics":
            raise RequestError(f"No route {request.method} {request.path}: metrics are GET /metrics", 404)
        if request.method not in ("GET", "HEAD"):
            raise RequestError(f"{request.method} is not allowed on /metrics: use GET, HEAD", 405,
                               headers={"Allow": "GET, HEAD"})
        return http.Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())

    def render_error(self, error: RequestError, request) -> http.Response:
        headers = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in error.headers.items())
        return http.Response(error.status, error.message.encode(), b"text/plain; charset=utf-8", headers)
