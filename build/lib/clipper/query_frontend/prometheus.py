"""The query frontend's metrics in Prometheus text format, named as Clipper's exporter named them.

Clipper ran a separate exporter container that scraped /metrics and turned every numeric
leaf into a gauge ``<metric>_<field>`` with ``:`` and ``-`` replaced by ``_`` (e.g.
``app_hello_world_prediction_latency_p99``). We serve the same gauges from the frontend
itself, on the metrics port (1390, the exporter's port).
"""
import re

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from clipper.query_frontend.metrics import MetricsRegistry

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def gauge_name(metric: str, field: str) -> str:
    return _INVALID.sub("_", f"{metric}_{field}")


class ClipperCollector:
    def __init__(self, metrics: MetricsRegistry):
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


def build_app(metrics: MetricsRegistry) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClipperCollector(metrics))

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/metrics", scrape)])
    return app
