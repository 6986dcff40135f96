"""The metrics port: the query frontend's metrics in Prometheus text format, named as
Clipper's exporter named them, and the replicas' own (clipper_mc_*, and what their models add).

Clipper ran a separate exporter container that scraped /metrics and turned every numeric
leaf into a gauge ``<metric>_<field>`` with ``:`` and ``-`` replaced by ``_`` (e.g.
``app_hello_world_prediction_latency_p99``). We serve the same gauges from the frontend
itself, on the metrics port (1390, the exporter's port). A local backend's replicas write
their metrics to files in ``metrics_dir`` (clipper.container.metrics); the fresh ones are
served here too, and a stale one (its replica is gone) is deleted.

Clipper's metrics port was a Prometheus server. Of its API, the two read-only calls that
Clipper's own tests used are answered over the series served here: ``/api/v1/targets`` (the
frontend and each replica, all up) and ``/api/v1/series?match[]=<metric name>``. Queries
(PromQL) need a Prometheus server of your own pointed at ``/metrics``.
"""
import logging
import re
import time
from pathlib import Path
from typing import Dict, Iterable, List, Tuple
from urllib.parse import parse_qs

import httptools
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from clipper.container.metrics import FILE_SUFFIX, LABELS, NAME, STALE_SECONDS
from clipper.errors import RequestError
from clipper.query_frontend import http

log = logging.getLogger("clipper.query_frontend.prometheus")

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_NAME_SELECTOR = re.compile(r'\{\s*__name__\s*=\s*"([^"]*)"\s*\}')
FRONTEND_JOB = "query"                  # the job of Clipper's scrape config for the frontend
REPLICA_JOB = "model-container"


def gauge_name(metric: str, field: str) -> str:
    return _INVALID.sub("_", f"{metric}_{field}")


def frontend_families(metrics) -> Iterable[Metric]:
    for entries in metrics.report().values():
        for entry in entries:
            for metric, fields in entry.items():
                for field, value in fields.items():
                    try:
                        number = float(value)
                    except ValueError:
                        continue          # e.g. "unit"
                    yield GaugeMetricFamily(gauge_name(metric, field), f"Clipper {metric} {field}",
                                            value=number)


def read_replica_files(directory: str) -> List[Tuple[Path, List[Metric]]]:
    """The families in each fresh replica file; a stale file (its replica stopped writing:
    it died, or its cluster was stopped under it) is deleted."""
    found = []
    oldest = time.time() - STALE_SECONDS
    for path in sorted(Path(directory).glob("*" + FILE_SUFFIX)):
        try:
            if path.stat().st_mtime < oldest:
                path.unlink(missing_ok=True)
                continue
            found.append((path, list(text_string_to_metric_families(path.read_text(errors="replace")))))
        except FileNotFoundError:
            continue                      # replaced or deleted meanwhile
        except (OSError, ValueError) as error:
            log.warning("skipping the replica metrics in %s: %s", path.name, error)
    return found


def merged(files: List[Tuple[Path, List[Metric]]]) -> Iterable[Metric]:
    """One family per name, the replicas' series side by side."""
    merged: Dict[str, Metric] = {}
    for path, families in files:
        for family in families:
            first = merged.setdefault(family.name, family)
            if first is not family:
                if first.type == family.type:
                    first.samples.extend(family.samples)
                else:                     # two models gave one name two types: the first one's stay
                    log.warning("skipping %s of %s: a %s elsewhere", family.name, path.name, first.type)
    return merged.values()


class Exposition:
    """What the metrics port serves, collected afresh for each request."""

    def __init__(self, metrics, replica_metrics_dir: str = ""):
        self.metrics = metrics
        self.replica_metrics_dir = replica_metrics_dir

    def collect(self) -> Iterable[Metric]:
        return self.families()[0]

    def families(self) -> Tuple[List[Metric], List[Dict[str, str]]]:
        """The frontend's families, then the replicas' (a name the frontend uses is its own),
        and the labels of each replica they came from."""
        families = list(frontend_families(self.metrics))
        files = read_replica_files(self.replica_metrics_dir) if self.replica_metrics_dir else []
        taken = {family.name for family in families}
        families += [family for family in merged(files) if family.name not in taken]
        replicas = [next((dict(sample.labels) for family in file_families for sample in family.samples
                          if set(LABELS) <= set(sample.labels)), {}) for _, file_families in files]
        return families, [{name: labels.get(name, "") for name in LABELS} for labels in replicas]


class PrometheusApp(http.Application):
    """The metrics port, served by the query frontend's own HTTP layer."""

    def __init__(self, metrics, replica_metrics_dir: str = "", address: str = ""):
        """``metrics``: what to report (``report()``): a MetricSet, or the cluster's
        WorkerMetrics; ``replica_metrics_dir``: the replicas' files (clipper.container.metrics);
        ``address``: this port's host:port, as a target's instance."""
        self.exposition = Exposition(metrics, replica_metrics_dir)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.exposition)
        self.address = address
        self.routes = {"/metrics": self._metrics, "/api/v1/targets": self._targets,
                       "/api/v1/series": self._series}

    def handle(self, request: http.Request) -> http.Response:
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

    def _metrics(self, _request: http.Request) -> http.Response:
        return http.Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())

    def _targets(self, _request: http.Request) -> http.Response:
        targets = [self._target({"job": FRONTEND_JOB, "instance": self.address}, f"http://{self.address}/metrics")]
        for labels in self.exposition.families()[1]:
            targets.append(self._target({"job": REPLICA_JOB, "instance": labels["replica"], **labels},
                                        f"http://{self.address}/metrics"))
        return _success({"activeTargets": targets, "droppedTargets": []})

    @staticmethod
    def _target(labels: Dict[str, str], url: str) -> dict:
        return {"discoveredLabels": labels, "labels": labels, "scrapePool": labels["job"],
                "scrapeUrl": url, "lastError": "", "health": "up"}

    def _series(self, request: http.Request) -> http.Response:
        names = [_metric_name(selector) for selector in _query(request).get("match[]", [])]
        if not names:
            raise RequestError("no match[] parameter: give one or more metric names, "
                               "e.g. /api/v1/series?match[]=clipper_mc_pred_total", 400)
        wanted, found, seen = set(names), [], set()
        for family in self.exposition.families()[0]:
            for sample in family.samples:
                if sample.name in wanted:
                    series = {"__name__": sample.name, **sample.labels}
                    key = tuple(sorted(series.items()))
                    if key not in seen:
                        seen.add(key)
                        found.append(series)
        return _success(found)

    def render_error(self, error: RequestError, request) -> http.Response:
        headers = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in error.headers.items())
        if request is not None and request.path.startswith("/api/"):      # as Prometheus answers
            body = orjson.dumps({"status": "error", "errorType": "bad_data", "error": error.message})
            return http.Response(error.status, body, b"application/json", headers)
        return http.Response(error.status, error.message.encode(), b"text/plain; charset=utf-8", headers)


def _success(data) -> http.Response:
    return http.Response(200, orjson.dumps({"status": "success", "data": data}))


def _query(request: http.Request) -> Dict[str, List[str]]:
    try:
        query = httptools.parse_url(request.target).query or b""
    except httptools.HttpParserInvalidURLError:
        query = b""
    return parse_qs(query.decode("utf-8", "replace"))


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
