"""The ContainerManager interface: how a backend starts, finds and stops a cluster.

The base class holds what every backend shares: the cluster's name, ports and settings,
the checks before a start, and the one wait until the servers answer. Each backend only
says where a role's process runs (``clipper.launch`` says what it runs).
"""
import abc
import logging
import numbers
import os
import re
import stat
from typing import Optional

from clipper import launch as recipe
from clipper.config import Config
from clipper.redis_schema import is_dns_label
from clipper.rpc import auth
from clipper_admin.exceptions import ClipperException
from clipper_admin.ports import require_free_ports

CLIPPER_INTERNAL_QUERY_PORT = 1337
CLIPPER_INTERNAL_MANAGEMENT_PORT = 1338
CLIPPER_INTERNAL_RPC_PORT = 7000
CLIPPER_INTERNAL_METRIC_PORT = 1390
CLIPPER_INTERNAL_REDIS_PORT = 6379
CLIPPER_INTERNAL_FLUENTD_PORT = 24224
# The Prometheus port follows the query port (1390 for Clipper's 1337), so that every port a
# cluster takes comes from its own parameters: clusters on other query ports never share it.
METRIC_PORT_OFFSET = CLIPPER_INTERNAL_METRIC_PORT - CLIPPER_INTERNAL_QUERY_PORT
CLIPPER_DOCKER_LABEL = "ai.clipper.container.label"
CLIPPER_NAME_LABEL = "ai.clipper.name"
CLIPPER_MODEL_CONTAINER_LABEL = "ai.clipper.model_container.label"
CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL = "ai.clipper.query_frontend.label"
CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL = "ai.clipper.management_frontend.label"
CLIPPER_QUERY_FRONTEND_ID_LABEL = "ai.clipper.query_frontend.id"
CONTAINERLESS_MODEL_IMAGE = "NO_CONTAINER"
# 0.4.1's port labels of a cluster's containers (the Docker backend reads them back in connect()).
CLIPPER_DOCKER_PORT_LABELS = {
    "redis": "ai.clipper.redis.port",
    "query_rest": "ai.clipper.query_frontend.query.port",
    "query_rpc": "ai.clipper.query_frontend.rpc.port",
    "management": "ai.clipper.management.port",
    "metric": "ai.clipper.metric.port",
    "fluentd": "ai.clipper.fluentd.port",
}
CLIPPER_METRIC_CONFIG_LABEL = "ai.clipper.metric.config"
CLIPPER_FLUENTD_CONFIG_LABEL = "ai.clipper.fluentd.config"
_MODEL_CONTAINER_LABEL_DELIMITER = "_"
# The end of every backend's "no such cluster" error.
START_HINT = "Start one with start_clipper() (`clipper start` on the command line)."


class ClusterAdapter(logging.LoggerAdapter):
    """0.4.1's log adapter: prefixes each message with ``[cluster_name]`` (``extra``)."""

    def process(self, msg, kwargs):
        return "[{}] {}".format(self.extra["cluster_name"], msg), kwargs


def whole_number(name: str, value, least: int = 1, most: Optional[int] = None) -> int:
    """``value`` as an int, a whole number >= ``least`` (and <= ``most``; a bool is not one, a
    numpy integer is), or ClipperException naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ClipperException(f"{name} must be a whole number >= {least}, not {value!r}")
    if most is not None and value > most:
        raise ClipperException(f"{name} must be at most {most}, not {value!r}")
    return int(value)


def replica_count(num_replicas) -> int:
    """``num_replicas`` checked as every backend takes it (0 to MAX_REPLICAS_PER_VERSION)."""
    return whole_number("num_replicas", num_replicas, least=0, most=recipe.MAX_REPLICAS_PER_VERSION)


def package_list(pkgs_to_install):
    """``pkgs_to_install`` as a list of pip requirements (any collection of strings; None:
    none), or ClipperException: a single string would reach pip letter by letter."""
    if pkgs_to_install is None:
        return None
    if not isinstance(pkgs_to_install, (str, bytes)):
        try:
            packages = list(pkgs_to_install)
        except TypeError:
            packages = None
        # No control characters: a line break in one would start a line of its own in a
        # Dockerfile (an instruction) or a requirements file.
        if packages is not None and all(isinstance(package, str) and package.isprintable()
                                        for package in packages):
            return packages
    raise ClipperException(f"pkgs_to_install must be a list of pip requirements, e.g. "
                           f"['scikit-learn==1.5.2'], not {pkgs_to_install!r}")


def write_log_copy(logging_dir, file_name, content: bytes) -> str:
    """Write a copy of one log into ``logging_dir``; its path. Never through a symbolic link
    or into a FIFO or device that is there (the folder may be shared with others):
    ClipperException instead."""
    path = os.path.join(logging_dir, file_name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as error:
        why = ("it is a symbolic link, which is not followed" if os.path.islink(path) else
               "it is not a regular file" if os.path.lexists(path) else error.strerror)
        raise ClipperException(f"Cannot write the log {path}: {why}") from None
    with os.fdopen(fd, "wb") as copy:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ClipperException(f"Cannot write the log {path}: it is not a regular file")
        copy.truncate()
        copy.write(content)
    return path


def create_model_container_label(name, version):
    return f"{name}{_MODEL_CONTAINER_LABEL_DELIMITER}{version}"


def parse_model_container_label(label):
    splits = label.split(_MODEL_CONTAINER_LABEL_DELIMITER)
    if len(splits) != 2:
        raise ClipperException(f"Unable to parse model container label {label}")
    return splits


def default_metric_port(query_port):
    return query_port + METRIC_PORT_OFFSET


def public_host_for(host):
    """How clients address servers that listen on ``host``."""
    return "localhost" if host == "127.0.0.1" else host


MIN_LOG_SIZE = 64 * 1024


def log_size_from_environment() -> dict:
    """CLIPPER_MAX_LOG_SIZE (bytes), checked: the supervisor starts each log afresh past it."""
    value = os.environ.get("CLIPPER_MAX_LOG_SIZE")
    if value is None:
        return {}
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < MIN_LOG_SIZE:
        raise ClipperException(f"CLIPPER_MAX_LOG_SIZE={value!r}: give a whole number of bytes, at "
                               f"least {MIN_LOG_SIZE}")
    return {"max_log_size": size}


def is_valid_name(value) -> bool:
    """Model names and versions must be DNS-1123 labels (they name containers and processes)."""
    return is_dns_label(str(value))


# A cluster's name names its state directory (and containers, images and actors): never a
# path of its own, such as "..", "" or "a/b", which would make a stop delete another place.
# Checked where a name becomes a path or new resources; a Docker cluster of an older Clipper,
# whatever its label, can still be named to stop it.
# Single separators between letters and digits: the Docker backend's image names hold it.
_CLUSTER_NAME_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")


def checked_cluster_name(name) -> str:
    if not isinstance(name, str) or len(name) > 128 or not _CLUSTER_NAME_PATTERN.match(name):
        raise ClipperException(f"A cluster name is 1 to 128 letters and digits, with single '-', '_' "
                               f"or '.' between them; {name!r} is not one")
    return name


# Exits in a row, each soon after its start, that make a process (a replica, a frontend) one
# that keeps exiting, not one still starting: the deploy or the start then fails with its log.
FAILURES_REPORTED = 2

# The serving settings a manager takes (each an attribute of the same name) and hands to its
# cluster's frontends (and, through them, to the replicas that read the same setting).
SERVING_SETTINGS = ("max_body_size", "max_batch_size", "header_timeout", "max_output_size", "busy_poll_us",
                    "max_queued_inputs")


class ContainerManager(abc.ABC):
    """What ClipperConnection needs from a backend (clipper_admin 0.4.1's interface)."""

    cluster_identifier = "default-cluster"
    # What a start raises when one of the cluster's ports is taken.
    port_taken_error = ClipperException
    # Query frontend processes (only the local backend runs more than one).
    query_workers = 1
    # Whether deploy_model runs a Docker image by its name (the local and Ray backends run
    # model directories; Clipper's noop container image is served there as one of ours).
    runs_images = True
    # 0.4.1's DockerContainerManager attribute, read by Clipper's tests: no backend sends the
    # logs to a collector (get_clipper_logs reads each process's or container's own).
    centralize_log = False

    def __init__(self, cluster_name="default-cluster", public_host="localhost",
                 clipper_query_port=CLIPPER_INTERNAL_QUERY_PORT,
                 clipper_management_port=CLIPPER_INTERNAL_MANAGEMENT_PORT,
                 clipper_rpc_port=CLIPPER_INTERNAL_RPC_PORT,
                 clipper_metric_port=None, redis_ip=None,
                 redis_port=CLIPPER_INTERNAL_REDIS_PORT, admin_token=None,
                 max_body_size=Config.max_body_size, rpc_auth=auth.AUTO,
                 max_batch_size=Config.max_batch_size, header_timeout=Config.header_timeout,
                 max_output_size=Config.max_output_size, busy_poll_us=Config.busy_poll_us,
                 max_queued_inputs=Config.max_queued_inputs):
        """``clipper_metric_port`` None: the query port + 53 (see METRIC_PORT_OFFSET)."""
        if type(header_timeout) not in (int, float) or not header_timeout > 0:
            raise ClipperException(f"header_timeout must be a number of seconds above 0, not {header_timeout!r}")
        self.cluster_name = cluster_name
        self.cluster_identifier = cluster_name
        self.public_host = public_host
        self.clipper_query_port = clipper_query_port
        self.clipper_management_port = clipper_management_port
        self.clipper_rpc_port = clipper_rpc_port
        self.clipper_metric_port = (default_metric_port(clipper_query_port) if clipper_metric_port is None
                                    else clipper_metric_port)
        self.redis_ip = redis_ip            # None: the cluster runs its own Redis
        self.redis_port = redis_port
        self.admin_token = admin_token      # None: $CLIPPER_ADMIN_TOKEN, or the running cluster's
        # SERVING_SETTINGS, handed to the cluster's frontends (_cluster_config, the Ray actor).
        self.max_body_size = max_body_size
        self.max_batch_size = whole_number("max_batch_size", max_batch_size)   # most inputs in one input_batch
        self.header_timeout = float(header_timeout)      # seconds to receive a request's headers
        self.max_output_size = whole_number("max_output_size", max_output_size)   # bytes, one model output
        self.busy_poll_us = whole_number("busy_poll_us", busy_poll_us, least=0)   # clipper.busy_poll; 0: off
        self.max_queued_inputs = whole_number("max_queued_inputs", max_queued_inputs)   # per model version
        self.rpc_auth = rpc_auth            # "auto": CURVE with a token or beyond loopback

    # ---- starting, for every backend ----
    def _cluster_config(self, cache_size, body_timeout, listen_host, redis_url) -> Config:
        """The settings every process of this cluster starts with."""
        if self.admin_token is None:
            self.admin_token = os.environ.get("CLIPPER_ADMIN_TOKEN", "")
        return Config(host=listen_host, query_port=self.clipper_query_port,
                      management_port=self.clipper_management_port, rpc_port=self.clipper_rpc_port,
                      metrics_port=self.clipper_metric_port, redis_url=redis_url,
                      cache_size=cache_size, body_timeout=float(body_timeout),
                      admin_token=self.admin_token, **{limit: getattr(self, limit) for limit in SERVING_SETTINGS},
                      query_workers=self.query_workers, **auth.cluster_keys(self.rpc_auth, listen_host, self.admin_token),
                      **log_size_from_environment())

    def _require_free_ports(self, listen_host, extra=()):
        require_free_ports(listen_host, [*self.serving_ports(), *extra], taken_error=self.port_taken_error)

    @staticmethod
    def _wait_until_serving(launches, failure):
        """Until every server in ``launches`` answers; ``failure()`` says early why one cannot."""
        try:
            recipe.wait_until_ready(launches, failure)
        except recipe.StartFailed as error:
            raise ClipperException(f"Clipper did not start: {error}") from None

    @abc.abstractmethod
    def start_clipper(self, query_frontend_image, mgmt_frontend_image, frontend_exporter_image,
                      cache_size, qf_http_thread_pool_size, qf_http_timeout_request,
                      qf_http_timeout_content, num_frontend_replicas):
        """Start Redis and both frontends; return once they answer, leaving self connected."""

    @abc.abstractmethod
    def connect(self):
        """Find a running cluster of this name; raise ClipperException if there is none."""

    @abc.abstractmethod
    def deploy_model(self, name, version, input_type, image, num_replicas=1, num_gpus=0):
        """Start ``num_replicas`` containers of a model version, each with ``num_gpus`` GPUs."""

    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None):
        """Package a model directory; return what ``deploy_model`` takes as ``image``."""
        raise NotImplementedError(f"{type(self).__name__} cannot build models")

    def discard_build(self, image):
        """Remove what ``build_model`` made, which no deploy took. Images stay (as in 0.4.1)."""

    @abc.abstractmethod
    def get_num_replicas(self, name, version):
        pass

    @abc.abstractmethod
    def set_num_replicas(self, name, version, input_type, image, num_replicas, num_gpus=None):
        """Start or stop containers of the version; new ones get ``num_gpus`` GPUs each
        (None: as many as the version's replicas have)."""

    @abc.abstractmethod
    def get_logs(self, logging_dir):
        """Copy each process's log into ``logging_dir``; return the file paths."""

    @abc.abstractmethod
    def stop_models(self, models):
        """Stop the containers of ``{name: [version, ...]}``."""

    @abc.abstractmethod
    def stop_all_model_containers(self):
        pass

    @abc.abstractmethod
    def stop_all(self, graceful=True):
        """Stop every process of the cluster and forget it."""

    # For backends that keep ``public_host`` and the ``clipper_*_port`` attributes.
    def serving_ports(self):
        """The ports a cluster listens on, named for error messages."""
        return [("query frontend", self.clipper_query_port),
                ("management frontend", self.clipper_management_port),
                ("model RPC", self.clipper_rpc_port), ("Prometheus metrics", self.clipper_metric_port),
                *((f"model RPC of query frontend worker {k}", self.clipper_rpc_port + k)
                  for k in range(1, self.query_workers))]

    def get_admin_addr(self):
        return f"{self.public_host}:{self.clipper_management_port}"

    def get_query_addr(self):
        return f"{self.public_host}:{self.clipper_query_port}"

    def get_metric_addr(self):
        """Prometheus text format at http://<this address>/metrics."""
        return f"{self.public_host}:{self.clipper_metric_port}"

    def replica_failure(self, name, version):
        """Why replicas of this model version keep failing, if the backend can tell; else None."""
        return None
