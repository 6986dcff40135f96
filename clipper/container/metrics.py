"""A replica's own metrics: Clipper 0.4.1's model-container metrics (``clipper_mc_*``) and
those its model adds with ``clipper_admin.metrics``.

Clipper's containers each served them on a port of their own for its Prometheus to
scrape. A replica of the local backend instead writes them, in Prometheus's text format,
to a file of its own in the cluster's ``metrics_dir`` (within a second of a change, and
every few seconds regardless, which tells the reader that it lives), and the query frontend
serves every fresh file on the metrics port beside its own metrics
(clipper.query_frontend.prometheus); the Docker backend gives the frontend and its replicas
a volume for them. Elsewhere (Ray, a client's process) they are kept in the process and not
exported.

Each series is labelled with the replica's model name, version and ``replica`` (its name
in the cluster, as the supervisor calls it): several replicas' series stay apart, as a
Prometheus's ``instance`` label kept Clipper's apart, and a replica restarted in its place
takes up its series (from zero, as any restarted Prometheus target).
"""
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, Summary, disable_created_metrics, generate_latest)

log = logging.getLogger("clipper.container.metrics")

# clipper_admin 0.4.1's metrics.config.DEFAULT_BUCKETS
DEFAULT_BUCKETS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500, float("inf"))
TYPES = {"Counter": Counter, "Gauge": Gauge, "Histogram": Histogram, "Summary": Summary}
LABELS = ("model_name", "model_version", "replica")
# Prometheus's classic metric names: what every scraper and dashboard of Clipper's era reads
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
WRITE_INTERVAL_SECONDS = 1.0     # at most this often, after a change
REFRESH_SECONDS = 5.0            # at least this often
STALE_SECONDS = 15.0             # a file older than this is a dead replica's
FILE_SUFFIX = ".prom"
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")

# Clipper 0.4.1's monitoring/metrics_config.yaml, "Model Container" (prefix clipper_mc_)
_LATENCY_BUCKETS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500)
_TRANSFER_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CONTAINER_METRICS = (
    ("clipper_mc_pred_total", "Counter", "The number of prediction made in this model container", None),
    ("clipper_mc_end_to_end_latency_ms", "Histogram",
     "The time in ms takes from receive RPC call to send off prediction.", _LATENCY_BUCKETS),
    ("clipper_mc_recv_time_ms", "Histogram", "The time in ms takes to receive RPC call.", _TRANSFER_BUCKETS),
    ("clipper_mc_parse_time_ms", "Histogram", "The time in ms takes to parse RPC call.", _TRANSFER_BUCKETS),
    ("clipper_mc_handle_time_ms", "Histogram", "The time in ms takes to make prediction.", _LATENCY_BUCKETS),
)


class ReplicaMetrics:
    """The metrics of this process; ``REPLICA`` is the one instance."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self._metrics: Dict[str, object] = {}       # by the name given to add()
        self._children: Dict[str, object] = {}      # the same, with this replica's labels
        self._labels = ("", "", "")
        self._path: Optional[Path] = None
        self._changed = False
        self._written_at = 0.0

    def bind(self, model_name: str, model_version: str, replica: str = "", directory: str = "") -> None:
        """Label this replica's series (``replica``: its name; by default host and process
        id), add Clipper's container metrics, and, with a ``directory``, write them there
        from now on (at once: the series exist at zero)."""
        replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        previous, self._labels = self._labels, (model_name, model_version, replica)
        for name, metric in self._metrics.items():    # added before the replica knew its labels
            metric.remove(*previous)
            self._children[name] = metric.labels(*self._labels)
        for name, kind, description, buckets in CONTAINER_METRICS:
            self.add(name, kind, description, buckets)
        if directory:
            disable_created_metrics()       # Clipper's series had no *_created; a replica's process alone
            self._path = Path(directory) / (_UNSAFE_IN_FILE_NAME.sub("_", replica) + FILE_SUFFIX)
            self.write()

    def add(self, name: str, kind: str, description: str,
            buckets: Optional[Sequence[float]] = DEFAULT_BUCKETS) -> None:
        """Add a metric; a name added before is left as it is (as clipper_admin 0.4.1 did).
        Raises ValueError for an unknown type or a name Prometheus does not take."""
        if name in self._children:
            return
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError("a metric name is letters, digits, '_' and ':', not starting with a digit")
        if kind not in TYPES:
            raise ValueError(f"Metric type needs to be one of {list(TYPES)}, not {kind!r}")
        options = {"buckets": list(buckets or DEFAULT_BUCKETS)} if kind == "Histogram" else {}
        metric = TYPES[kind](name, description or name, LABELS, registry=self.registry, **options)
        self._metrics[name] = metric
        self._children[name] = metric.labels(*self._labels)
        self._changed = True

    def report(self, name: str, value: float) -> None:
        """Count (Counter), set (Gauge) or observe (Histogram, Summary) ``value``.
        Raises KeyError for a name not added, ValueError for a value that is not a number."""
        child = self._children[name]
        value = float(value)
        if isinstance(child, Counter):
            child.inc(value)
        elif isinstance(child, Gauge):
            child.set(value)
        else:
            child.observe(value)
        self._changed = True

    def record_call(self, requests: int, receive_seconds: float, parse_seconds: float,
                    handle_seconds: float) -> None:
        """One model call, which answered ``requests`` prediction requests."""
        children = self._children
        children["clipper_mc_pred_total"].inc(requests)
        children["clipper_mc_recv_time_ms"].observe(receive_seconds * 1000)
        children["clipper_mc_parse_time_ms"].observe(parse_seconds * 1000)
        children["clipper_mc_handle_time_ms"].observe(handle_seconds * 1000)
        children["clipper_mc_end_to_end_latency_ms"].observe(
            (receive_seconds + parse_seconds + handle_seconds) * 1000)
        self._changed = True

    def write_if_due(self, now: float) -> None:
        """``now``: time.monotonic()."""
        if self._path is not None and now - self._written_at >= (
                WRITE_INTERVAL_SECONDS if self._changed else REFRESH_SECONDS):
            self.write()

    def write(self) -> None:
        """Replace this replica's file at once (renamed into place: a reader never sees half)."""
        if self._path is None:
            return
        self._changed = False
        self._written_at = time.monotonic()
        partial = self._path.with_name(self._path.name + ".tmp")
        try:
            partial.write_bytes(generate_latest(self.registry))
            os.replace(partial, self._path)
        except OSError as error:       # the state directory was deleted: keep serving
            log.warning("cannot write the replica's metrics to %s: %s", self._path, error)

    def remove(self) -> None:
        """A replica that stops takes its series with it."""
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


REPLICA = ReplicaMetrics()
