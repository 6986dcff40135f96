"""The metrics port: the query frontend's metrics in Prometheus text format, named as
Clipper's exporter named them, and the replicas' own (clipper_mc_*, and what their models add).

Clipper ran a separate exporter container that scraped /metrics and turned every numeric
leaf into a gauge ``<metric>_<field>`` with ``:`` and ``-`` replaced by ``_`` (e.g.
``app_hello_world_prediction_latency_p99``). We serve the same gauges from the frontend
itself, on the metrics port (1390, the exporter's port). The replicas write their metrics
to files in ``metrics_dir`` (clipper.container.metrics); those are served here too
(clipper.query_frontend.replica_metrics).

Clipper's metrics port was a Prometheus server. Of its API, the two read-only calls that
Clipper's own tests used are answered over the series served here: ``/api/v1/targets`` (the
frontend and each replica, all up) and ``/api/v1/series?match[]=<metric name>``. Queries
(PromQL) need a Prometheus server of your own pointed at ``/metrics``.
"""
import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional
from urllib.parse import parse_qs

import httptools
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, Metric

from clipper.container.metrics import NAME
from clipper.errors import RequestError
from clipper.query_frontend import http
from clipper.query_frontend.replica_metrics import ReplicaFiles, combined

log = logging.getLogger("clipper.query_frontend.prometheus")

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_NAME_SELECTOR = re.compile(r'\{\s*__name__\s*=\s*"([^"]*)"\s*\}')
FRONTEND_JOB = "query"                  # the job of Clipper's scrape config for the frontend
REPLICA_JOB = "model-container"


def gauge_name(metric: str, field: str) -> str:
    return _INVALID.sub("_", f"{metric}_{field}")


def frontend_families(metrics) -> Iterable[Metric]:
    """One gauge per numeric field. Metrics whose names differ only where the gauge name has
    a ``_`` (apps ``hello-world`` and ``hello_world``) would give one gauge twice, and one
    name twice makes the whole text invalid: the first metric's is served (logged)."""
    served: Dict[str, str] = {}
    for entries in metrics.report().values():
        for entry in entries:
            for metric, fields in entry.items():
                for field, value in fields.items():
                    try:
                        number = float(value)
                    except ValueError:
                        continue          # e.g. "unit"
                    name = gauge_name(metric, field)
                    if name in served:
                        _warn_clash(name, served[name], metric)
                        continue
                    served[name] = metric
                    yield GaugeMetricFamily(name, f"Clipper {metric} {field}", value=number)


_clashes_told = set()


def _warn_clash(name: str, served: str, left_out: str) -> None:
    if (served, left_out) not in _clashes_told:       # once, not at every scrape
        _clashes_told.add((served, left_out))
        log.warning("the metrics port leaves out %s: its gauge %s is %s's (rename one of them)",
                    left_out, name, served)


class _Families:
    """A collector of families collected already."""

    def __init__(self, families: List[Metric]):
        self.families = families

    def collect(self) -> List[Metric]:
        return self.families


def render(families: List[Metric]) -> bytes:
    """``families`` in Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


class PrometheusApp(http.Application):
    """The metrics port, served by the query frontend's own HTTP layer. What needs the
    replicas' files is answered from a thread (their reading and parsing)."""

    def __init__(self, metrics, replica_metrics_dir: str = "", address: str = ""):
        """``metrics``: what to report (``report()``): a MetricSet, or the cluster's
        WorkerMetrics; ``replica_metrics_dir``: the replicas' files (clipper.container.metrics);
        ``address``: this port's host:port, as the frontend's target."""
        self.metrics = metrics
        self.replica_files = ReplicaFiles(replica_metrics_dir) if replica_metrics_dir else None
        # A thread of its own: slow scrapes wait for each other, not the loop's other work in
        # the default executor (name lookups, for one).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-port")
        self.address = address
        self._scrape: Optional[asyncio.Future] = None     # the /metrics answer being made
        self.routes = {"/metrics": self._metrics, "/api/v1/targets": self._targets,
                       "/api/v1/series": self._series}

    def handle(self, request: http.Request) -> http.Answer:
        route = self.routes.get(request.path)
        if route is None:
            raise RequestError(
                f"No route {request.method} {request.path}: this port serves GET /metrics (Prometheus "
                "text), /api/v1/targets and /api/v1/series?match[]=<metric name>; for queries, point a "
                "Prometheus server at /metrics", 404)
        if request.method not in ("GET", "HEAD"):
            raise RequestError(f"{request.method} is not allowed on {request.path}: use GET, HEAD", 405,
                               headers={"Allow": "GET, HEAD"})
        return route(request)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _in_thread(self, answer) -> asyncio.Future:
        """``answer(own families, replicas)`` run in a thread; the frontend's own families
        are taken here, in the event loop that changes them."""
        own = list(frontend_families(self.metrics))

        def answer_with_replicas():
            return answer(own, self.replica_files.read() if self.replica_files else [])
        return asyncio.get_running_loop().run_in_executor(self.executor, answer_with_replicas)

    def _metrics(self, _request: http.Request) -> asyncio.Future:
        """Scrapes that come while one is being answered share its answer: each took the
        frontend's figures on the loop and queued for the thread with its own copy (60 at
        once with 1,500 applications: 760 MB, predictions held up to 1 s)."""
        if self._scrape is None or self._scrape.done():
            self._scrape = self._in_thread(lambda own, replicas: http.Response(
                200, render(combined(own, replicas)), CONTENT_TYPE_LATEST.encode()))
        return self._scrape

    def _targets(self, _request: http.Request) -> asyncio.Future:
        def targets(_own, replicas):
            found = [self._target({"job": FRONTEND_JOB, "instance": self.address})]
            named = {tuple(replica.labels.values()): replica.labels for replica in replicas}   # each once
            found += [self._target({"job": REPLICA_JOB, "instance": labels["replica"], **labels})
                      for labels in named.values()]
            return _success({"activeTargets": found, "droppedTargets": []})
        return self._in_thread(targets)

    def _target(self, labels: Dict[str, str]) -> dict:
        return {"discoveredLabels": labels, "labels": labels, "scrapePool": labels["job"],
                "scrapeUrl": f"http://{self.address}/metrics", "lastError": "", "health": "up"}

    def _series(self, request: http.Request) -> asyncio.Future:
        names = [_metric_name(selector) for selector in _query(request).get("match[]", [])]
        if not names:
            raise RequestError("no match[] parameter: give one or more metric names, "
                               "e.g. /api/v1/series?match[]=clipper_mc_pred_total", 400)

        def series(own, replicas):     # combined() has each series once
            wanted = set(names)
            return _success([{"__name__": sample.name, **sample.labels} for family in combined(own, replicas)
                             for sample in family.samples if sample.name in wanted])
        return self._in_thread(series)

    def render_error(self, error: RequestError, request) -> http.Response:
        headers = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in error.headers.items())
        if request is not None and request.path.startswith("/api/"):      # as Prometheus answers
            kind = "not_found" if error.status == 404 else "bad_data"
            body = orjson.dumps({"status": "error", "errorType": kind, "error": error.message})
            return http.Response(error.status, body, b"application/json", headers)
        return http.Response(error.status, error.message.encode(), b"text/plain; charset=utf-8", headers)


def _success(data) -> http.Response:
    return http.Response(200, orjson.dumps({"status": "success", "data": data}))


def _query(request: http.Request) -> Dict[str, List[str]]:
    try:
        query = httptools.parse_url(request.target).query or b""
    except httptools.HttpParserInvalidURLError:
        query = b""
    return parse_qs(query.decode("utf-8", "replace"), keep_blank_values=True)


def _metric_name(selector: str) -> str:
    """The metric name of a series selector that is only one: ``name`` or
    ``{__name__="name"}``; anything else is refused (no PromQL here)."""
    selector = selector.strip()
    match = _NAME_SELECTOR.fullmatch(selector)
    name = match.group(1) if match else selector
    if not NAME.fullmatch(name):
        raise RequestError(f"match[]={selector[:200]!r}: only a metric name is taken here (no label "
                           "matchers); for PromQL, point a Prometheus server at /metrics", 400)
    return name
