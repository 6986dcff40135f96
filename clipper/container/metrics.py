"""A replica's own metrics: Clipper 0.4.1's model-container metrics (``clipper_mc_*``) and
those its model adds with ``clipper_admin.metrics``.

Clipper's containers each served them on a port of their own for its Prometheus to
scrape. A replica of the local backend instead writes them, in Prometheus's text format,
to a file of its own in the cluster's ``metrics_dir`` (within a second of a change), and a
thread of its own touches that file every few seconds, which tells the reader that the
replica lives even while its model computes; the query frontend serves every fresh file on
the metrics port beside its own metrics (clipper.query_frontend.prometheus). The Docker
backend gives the frontend and its replicas a volume for them; a Ray replica's actor
forwards its file to the frontends' node. In a client's process they are kept, unexported.

Each series is labelled with the replica's model name, version and ``replica`` (its name
in the cluster, as the supervisor or Docker calls it): several replicas' series stay apart,
as a Prometheus's ``instance`` label kept Clipper's apart, and a replica restarted in its
place takes up its series (from zero, as any restarted Prometheus target).

As in 0.4.1, where a metric server took the metrics apart from the model, a metric that
cannot be kept (a name Prometheus refuses, a clash, a negative count) is logged and left
out, and the model's predictions go on: 0.4.1 raised only for an unknown type, a report
to a name never added, and a value that is not a number.
"""
import logging
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from clipper.files import write_atomically
from clipper.log_limit import LogRateLimit

log = logging.getLogger("clipper.container.metrics")
log.addFilter(LogRateLimit(5, 10.0, "the model's metrics"))

# clipper_admin 0.4.1's metrics.config.DEFAULT_BUCKETS
DEFAULT_BUCKETS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500, float("inf"))
TYPES = ("Counter", "Gauge", "Histogram", "Summary")
LABELS = ("model_name", "model_version", "replica")
# Prometheus's classic metric names: what every scraper and dashboard of Clipper's era reads
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
WRITE_INTERVAL_SECONDS = 1.0     # at most this often, after a change
TOUCH_SECONDS = 5.0              # the file is touched this often while the replica lives
STALE_SECONDS = 15.0             # a file untouched for longer is a dead replica's
# The query frontend reads every replica's file when scraped: bounded.
MAX_METRICS = 64                 # per replica, Clipper's five included
MAX_BUCKETS = 32                 # per histogram
MAX_DESCRIPTION = 1000           # characters
MAX_FILE_BYTES = 1024 * 1024     # a larger file is not read (the limits above keep far below)
FILE_SUFFIX = ".prom"
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def file_name(replica: str) -> str:
    """The name of the metrics file of the replica named ``replica``."""
    return _UNSAFE_IN_FILE_NAME.sub("_", replica) + FILE_SUFFIX


def read_metrics_file(path) -> bytes:
    """The bytes of a replica's metrics file, read as the model's (which may have put
    anything there): a regular file, not through a link, without waiting on a FIFO, of at
    most MAX_FILE_BYTES. Raises ValueError saying why not; OSError if it is gone."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(descriptor, "rb", buffering=0) as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ValueError("not a regular file")
        content = file.read(MAX_FILE_BYTES + 1)
    if len(content) > MAX_FILE_BYTES:
        raise ValueError(f"more than {MAX_FILE_BYTES} bytes")
    return content


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
    """The metrics of this process; ``REPLICA`` is the one instance. prometheus_client is
    imported when the first metric is made: a replica whose interpreter lacks it serves
    without metrics (``available``)."""

    def __init__(self):
        self.registry = None
        self._metrics: Dict[str, object] = {}       # by the name given to add()
        self._children: Dict[str, object] = {}      # the same, with this replica's labels
        self._left_out: set = set()                 # added, but not kept: reports are ignored
        self._labels = ("", "", "")
        self._path: Optional[Path] = None
        self._changed = False
        self._written_at = 0.0
        self._writing = threading.Lock()            # the serving loop and the touch thread

    @property
    def available(self) -> bool:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return False
        return True

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
            if self._path is not None:
                raise RuntimeError(f"the replica's metrics are written to {self._path} already")
            from prometheus_client import disable_created_metrics
            disable_created_metrics()       # Clipper's series had no *_created; a replica's process alone
            self._path = Path(directory) / file_name(replica)
            self.write()
            threading.Thread(target=self._touch_while_alive, name="metrics-touch", daemon=True).start()

    def add(self, name: str, kind: str, description: str,
            buckets: Optional[Sequence[float]] = DEFAULT_BUCKETS) -> None:
        """Add a metric. Raises ValueError for an unknown type (as 0.4.1 did); a name added
        before is left as it is; a metric that cannot be kept is logged and left out."""
        if kind not in TYPES:
            raise ValueError(f"Metric type needs to be one of {list(TYPES)}, not {kind!r}")
        if not isinstance(name, str):
            raise ValueError(f"a metric name is a string, not {type(name).__name__}")
        if name in self._children or name in self._left_out:
            return
        problem = None
        if not self.available:
            problem = "prometheus_client is not installed in this replica's interpreter"
        elif not NAME.fullmatch(name):
            problem = "a metric name is letters, digits, '_' and ':', not starting with a digit"
        elif len(self._metrics) >= MAX_METRICS:
            problem = f"a replica keeps at most {MAX_METRICS} metrics"
        else:
            try:
                self._make(name, kind, str(description)[:MAX_DESCRIPTION] or name, buckets)
            except (TypeError, ValueError) as error:      # e.g. a clash, unsorted buckets
                problem = str(error)
        if problem:
            self._left_out.add(name)
            log.warning("the metric %r is left out: %s", name[:200], problem)

    def _make(self, name: str, kind: str, description: str, buckets: Optional[Sequence[float]]) -> None:
        import prometheus_client
        if self.registry is None:
            self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        options = {}
        if kind == "Histogram":
            options["buckets"] = [float(bound) for bound in (buckets or DEFAULT_BUCKETS)]
            if len(options["buckets"]) > MAX_BUCKETS:
                raise ValueError(f"a histogram has at most {MAX_BUCKETS} buckets, not {len(options['buckets'])}")
        metric = getattr(prometheus_client, kind)(name, description, LABELS, registry=self.registry, **options)
        self._metrics[name] = metric
        self._children[name] = metric.labels(*self._labels)
        self._changed = True

    def report(self, name: str, value: float) -> None:
        """Count (Counter), set (Gauge) or observe (Histogram, Summary) ``value``. Raises
        KeyError for a name never added, and float()'s error for a value that is not a
        number (as 0.4.1 did); a report to a metric left out, or a negative count, is ignored."""
        value = float(value)
        child = self._children.get(name)
        if child is None:
            if name in self._left_out:
                return
            raise KeyError(name)
        kind = type(child).__name__
        if kind == "Counter":
            if value < 0:
                log.warning("the counter %r cannot go down: %r is left out", name, value)
                return
            child.inc(value)
        elif kind == "Gauge":
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
        if self._changed and self._path is not None and now - self._written_at >= WRITE_INTERVAL_SECONDS:
            self.write()

    def write(self) -> None:
        """Replace this replica's file at once (renamed into place: a reader never sees half).
        Whatever goes wrong is logged: metrics never stop a replica from serving."""
        from prometheus_client import generate_latest
        with self._writing:
            if self._path is None:
                return
            self._changed = False
            self._written_at = time.monotonic()
            try:
                write_atomically(self._path, generate_latest(self.registry))
            except Exception as error:      # the state directory deleted; a bug of ours
                log.warning("cannot write the replica's metrics to %s: %s", self._path, error)

    def remove(self) -> None:
        """A replica that stops takes its series with it (and its touch thread ends)."""
        with self._writing:
            path, self._path = self._path, None
        if path is not None:
            path.unlink(missing_ok=True)

    def _touch_while_alive(self) -> None:
        while True:
            time.sleep(TOUCH_SECONDS)
            path = self._path
            if path is None:
                return
            try:
                os.utime(path)
            except FileNotFoundError:       # a reader took it for stale: written again at once,
                self.write()                # even while the model computes
            except OSError:
                pass


REPLICA = ReplicaMetrics()
