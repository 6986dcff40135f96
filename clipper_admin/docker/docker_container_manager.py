"""The Docker backend: every role of a cluster is a container on the local Docker engine.

As in clipper_admin 0.4.1, containers carry Clipper's labels, so that ``connect()``,
``stop_all()`` and closeClipper.py find a cluster again from any process. Unlike 0.4.1, the
containers use host networking and listen on 127.0.0.1 only, images are built here from
docker/Dockerfile (nothing is pulled from Clipper's frozen images), and crashed containers
are restarted by Docker.
"""
import logging
import os
import random
import time
from collections import Counter

import docker
import docker.errors
import docker.types
import requests

from clipper.cluster.gpus import machine_gpus, pick_devices
from clipper.config import Config, env_name
from clipper_admin.container_manager import (
    CLIPPER_DOCKER_LABEL, CLIPPER_INTERNAL_MANAGEMENT_PORT, CLIPPER_INTERNAL_METRIC_PORT,
    CLIPPER_INTERNAL_QUERY_PORT, CLIPPER_INTERNAL_REDIS_PORT, CLIPPER_INTERNAL_RPC_PORT,
    CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL, CLIPPER_MODEL_CONTAINER_LABEL,
    CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL, ContainerManager, create_model_container_label)
from clipper_admin.docker.images import build_model_image, default_base_image, ensure_runtime_image
from clipper_admin.exceptions import ClipperException
from clipper_admin.ports import require_free_ports

logger = logging.getLogger(__name__)

# Clipper 0.4.1's port labels, read back by connect().
PORT_LABELS = {"redis": "ai.clipper.redis.port", "management": "ai.clipper.management.port",
               "query": "ai.clipper.query_frontend.query.port",
               "rpc": "ai.clipper.query_frontend.rpc.port", "metric": "ai.clipper.metric.port"}
ROLE_LABEL = "ai.clipper.role"               # ours: which process a container runs
RUNTIME_IMAGE_LABEL = "ai.clipper.runtime.image"
GPUS_LABEL = "ai.clipper.gpus"               # ours: the GPU ids a model container was given
GPUS_PER_REPLICA_LABEL = "ai.clipper.gpus_per_replica"
ADMIN_TOKEN_VARIABLE = env_name("admin_token")
START_TIMEOUT_SECONDS = 120
STOP_GRACE_SECONDS = 10
# A replica restarted this often by Docker is failing, not starting.
FAILING_RESTARTS = 2


def engine():
    """A client of the local Docker engine, or one clear error."""
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as error:
        raise ClipperException(f"The Docker engine is not reachable ({error}). Start it (dockerd), "
                               "or use the local backend: --backend local") from None


class DockerContainerManager(ContainerManager):
    def __init__(self, cluster_name="default-cluster", docker_ip_address="localhost",
                 use_centralized_log=False, fluentd_port=24224,
                 clipper_query_port=CLIPPER_INTERNAL_QUERY_PORT,
                 clipper_management_port=CLIPPER_INTERNAL_MANAGEMENT_PORT,
                 clipper_rpc_port=CLIPPER_INTERNAL_RPC_PORT, redis_ip=None,
                 redis_port=CLIPPER_INTERNAL_REDIS_PORT, prometheus_port=9090,
                 docker_network="clipper_network", extra_container_kwargs=None,
                 base_image=None, clipper_metric_port=CLIPPER_INTERNAL_METRIC_PORT, redis_image=None,
                 admin_token=None, max_body_size=Config.max_body_size):
        """0.4.1's parameters; containers share the host's network, so ``docker_network``,
        ``prometheus_port`` and the centralized log options have no effect. Ours:
        ``base_image`` (default $CLIPPER_DOCKER_BASE_IMAGE, else python:<this minor>-slim)
        under the runtime image; ``redis_image`` to run Redis from an image of your own;
        ``admin_token`` and ``max_body_size`` as for LocalContainerManager."""
        self.cluster_name = cluster_name
        self.cluster_identifier = cluster_name
        self.public_host = docker_ip_address
        self.clipper_query_port = clipper_query_port
        self.clipper_management_port = clipper_management_port
        self.clipper_rpc_port = clipper_rpc_port
        self.clipper_metric_port = clipper_metric_port
        self.redis_ip = redis_ip
        self.redis_port = redis_port
        self.redis_image = redis_image
        self.extra_container_kwargs = dict(extra_container_kwargs or {})
        self.admin_token = admin_token      # None: $CLIPPER_ADMIN_TOKEN, or the running cluster's
        self.max_body_size = max_body_size
        self.base_image = base_image or os.environ.get("CLIPPER_DOCKER_BASE_IMAGE") or default_base_image()
        self.runtime_image = None
        self._client = None

    @property
    def client(self):
        if self._client is None:          # on first use: constructing needs no engine
            self._client = engine()
        return self._client

    # ---- containers of this cluster ----
    def _containers(self, **labels):
        wanted = {CLIPPER_DOCKER_LABEL: self.cluster_name, **labels}
        return self.client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in wanted.items()]})

    def _model_containers(self, name=None, version=None):
        labels = {ROLE_LABEL: "model-container"}
        if name is not None:
            labels[CLIPPER_MODEL_CONTAINER_LABEL] = create_model_container_label(name, version)
        return self._containers(**labels)

    def _run(self, role, arguments, image=None, environment=None, labels=None, name=None,
             device_requests=None):
        # As in 0.4.1, the user's extra_container_kwargs go to every container; labels and
        # environment are merged with ours, and what the cluster needs to work wins.
        kwargs = {"restart_policy": {"Name": "unless-stopped"}, **self.extra_container_kwargs}
        all_labels = {**kwargs.pop("labels", {}), CLIPPER_DOCKER_LABEL: self.cluster_name,
                      ROLE_LABEL: role, RUNTIME_IMAGE_LABEL: self.runtime_image,
                      **{label: str(port) for label, port in self._ports().items()}, **(labels or {})}
        all_environment = {**_as_dict(kwargs.pop("environment", {})), **(environment or {})}
        kwargs.update(name=f"{self.cluster_name}-{name or role}-{random.randint(0, 100000)}",
                      labels=all_labels, environment=all_environment, network_mode="host", detach=True)
        kwargs.pop("network", None)        # host networking: no network to join
        if device_requests:
            kwargs["device_requests"] = device_requests
        return self.client.containers.run(image or self.runtime_image, arguments, **kwargs)

    def _ports(self):
        return {PORT_LABELS["redis"]: self.redis_port, PORT_LABELS["management"]: self.clipper_management_port,
                PORT_LABELS["query"]: self.clipper_query_port, PORT_LABELS["rpc"]: self.clipper_rpc_port,
                PORT_LABELS["metric"]: self.clipper_metric_port}

    @staticmethod
    def _remove(containers, graceful=True):
        for container in containers:
            try:
                container.stop(timeout=STOP_GRACE_SECONDS if graceful else 0)
                container.remove(force=True)
            except docker.errors.NotFound:
                pass                       # already gone

    # ---- cluster ----
    def start_clipper(self, query_frontend_image=None, mgmt_frontend_image=None,
                      frontend_exporter_image=None, cache_size=33554432, qf_http_thread_pool_size=1,
                      qf_http_timeout_request=5, qf_http_timeout_content=300,
                      num_frontend_replicas=1):
        """Clipper's image names are accepted and ignored: every role runs the runtime image."""
        if num_frontend_replicas != 1:
            raise ClipperException("The Docker backend runs exactly one query frontend")
        if self._containers():
            raise ClipperException(
                f"Clipper cluster '{self.cluster_name}' is already running on the Docker engine. "
                "Use connect() to use it, or stop it with: python closeClipper.py")
        ports = self.serving_ports()
        if self.redis_ip is None:
            ports.append(("Redis", self.redis_port))
        require_free_ports("127.0.0.1", ports)
        self.runtime_image = ensure_runtime_image(self.client, self.base_image)
        if self.admin_token is None:
            self.admin_token = os.environ.get("CLIPPER_ADMIN_TOKEN", "")
        # The token goes through the environment: command lines are visible to every user.
        token = {ADMIN_TOKEN_VARIABLE: self.admin_token}
        try:
            redis_url = self._start_redis()
            common = ["--host=127.0.0.1", f"--redis-url={redis_url}", f"--body-timeout={qf_http_timeout_content}",
                      f"--max-body-size={self.max_body_size}"]
            self._run("management-frontend",
                      ["management-frontend", *common, f"--management-port={self.clipper_management_port}"],
                      environment=token, labels={CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL: ""})
            self._run("query-frontend",
                      ["query-frontend", *common, f"--query-port={self.clipper_query_port}",
                       f"--rpc-port={self.clipper_rpc_port}", f"--metrics-port={self.clipper_metric_port}",
                       f"--cache-size={cache_size}"],
                      environment=token, labels={CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL: ""})
            self._wait_until_serving()
        except BaseException:              # Ctrl-C or a failed start: leave nothing behind
            self.stop_all(graceful=False)
            raise
        logger.info("Clipper cluster '%s' started (Docker containers, image %s)",
                    self.cluster_name, self.runtime_image)

    def _start_redis(self):
        if self.redis_ip is not None:
            return f"redis://{self.redis_ip}:{self.redis_port}"
        if self.redis_image:
            self._run("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                                "--appendonly", "yes", "--appendfsync", "always",
                                "--notify-keyspace-events", "AKE"], image=self.redis_image)
        else:
            self._run("redis", ["redis", "--host=127.0.0.1", "--cluster-dir=/data",
                                f"--redis-url=redis://127.0.0.1:{self.redis_port}"])
        return f"redis://127.0.0.1:{self.redis_port}"

    def _wait_until_serving(self):
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for url in (f"http://127.0.0.1:{self.clipper_management_port}/admin/ping",
                    f"http://127.0.0.1:{self.clipper_query_port}/metrics"):
            while True:
                try:
                    if requests.get(url, timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                failing = [c for c in self._containers() if _restarts(c) >= FAILING_RESTARTS]
                if failing or time.monotonic() > deadline:
                    raise ClipperException("Clipper did not start.\n" + "\n".join(
                        f"--- {c.name} ---\n{_log_tail(c)}" for c in (failing or self._containers())))
                time.sleep(0.2)

    def connect(self):
        frontends = self._containers(**{ROLE_LABEL: "query-frontend"})
        if not frontends:
            raise ClipperException(f"No running Clipper cluster named '{self.cluster_name}' on the "
                                   "Docker engine. Start one with start_clipper().")
        labels = frontends[0].labels
        self.redis_port = int(labels[PORT_LABELS["redis"]])
        self.clipper_management_port = int(labels[PORT_LABELS["management"]])
        self.clipper_query_port = int(labels[PORT_LABELS["query"]])
        self.clipper_rpc_port = int(labels[PORT_LABELS["rpc"]])
        self.clipper_metric_port = int(labels[PORT_LABELS["metric"]])
        self.runtime_image = labels[RUNTIME_IMAGE_LABEL]
        if self.admin_token is None:
            self.admin_token = _as_dict(frontends[0].attrs["Config"]["Env"]).get(ADMIN_TOKEN_VARIABLE, "")

    def stop_all(self, graceful=True):
        containers = self._containers()
        order = {"model-container": 0, "query-frontend": 1, "management-frontend": 1, "redis": 2}
        self._remove(sorted(containers, key=lambda c: order.get(c.labels.get(ROLE_LABEL), 0)), graceful)
        if containers:
            logger.info("Stopped Clipper cluster '%s' (%d containers)", self.cluster_name, len(containers))
        return len(containers)

    def get_logs(self, logging_dir):
        os.makedirs(logging_dir, exist_ok=True)
        paths = []
        for container in self._containers():
            path = os.path.join(logging_dir, f"{container.name}.log")
            with open(path, "wb") as log_file:
                log_file.write(container.logs())
            paths.append(path)
        return paths

    # ---- models ----
    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None):
        """An image ``[registry/]name:version`` of the runtime image plus the model directory.
        Clipper's closure base images are not used: the runtime image replaces them."""
        if self.runtime_image is None:
            self.runtime_image = ensure_runtime_image(self.client, self.base_image)
        tag = f"{name}:{version}"
        if container_registry:
            tag = f"{container_registry}/{tag}"
        return build_model_image(self.client, self.runtime_image, tag, model_data_path, pkgs_to_install)

    def deploy_model(self, name, version, input_type, image, num_replicas=1, num_gpus=0):
        self.set_num_replicas(name, version, input_type, image, num_replicas, num_gpus)

    def get_num_replicas(self, name, version):
        return len(self._model_containers(name, version))

    def set_num_replicas(self, name, version, input_type, image, num_replicas, num_gpus=None):
        """New containers get ``num_gpus`` GPUs each as device requests, the least used first."""
        current = self._model_containers(name, version)
        if num_gpus is None:
            num_gpus = int(current[0].labels.get(GPUS_PER_REPLICA_LABEL, 0)) if current else 0
        try:
            devices = machine_gpus()
            pick_devices(devices, num_gpus, Counter())
        except ValueError as error:
            raise ClipperException(f"Model {name}:{version}: {error}") from None
        in_use = Counter(device for container in self._model_containers()
                         for device in container.labels.get(GPUS_LABEL, "").split(",") if device)
        self._remove(current[num_replicas:])
        environment = {"CLIPPER_MODEL_NAME": name, "CLIPPER_MODEL_VERSION": str(version),
                       "CLIPPER_INPUT_TYPE": input_type, "CLIPPER_IP": "127.0.0.1",
                       "CLIPPER_PORT": str(self.clipper_rpc_port)}
        for _ in range(num_replicas - len(current)):
            chosen = pick_devices(devices, num_gpus, in_use)
            in_use.update(chosen)
            requests_ = [docker.types.DeviceRequest(device_ids=chosen, capabilities=[["gpu"]])] if chosen else None
            self._run("model-container", ["model-container"], image=image, environment=environment,
                      labels={CLIPPER_MODEL_CONTAINER_LABEL: create_model_container_label(name, version),
                              GPUS_LABEL: ",".join(chosen), GPUS_PER_REPLICA_LABEL: str(num_gpus)},
                      name=f"{name}_{version}", device_requests=requests_)

    def replica_failure(self, name, version):
        failing = [c for c in self._model_containers(name, version) if _restarts(c) >= FAILING_RESTARTS]
        if not failing:
            return None
        return f"Its container keeps exiting; its log ends with:\n{_log_tail(failing[0])}"

    def stop_models(self, models):
        for name, versions in models.items():
            for version in versions:
                self._remove(self._model_containers(name, version))

    def stop_all_model_containers(self):
        self._remove(self._model_containers())


def _as_dict(environment):
    """Docker takes an environment as a dict or as ["NAME=value", ...]."""
    if isinstance(environment, dict):
        return environment
    return dict(item.split("=", 1) for item in environment)


def _restarts(container):
    container.reload()
    return container.attrs.get("RestartCount", 0) + (container.status == "exited")


def _log_tail(container, lines=15):
    return container.logs(tail=lines).decode(errors="replace").rstrip()


def stop_all_docker_clusters(graceful=True):
    """Stop every Clipper cluster on the local Docker engine: ``[(cluster_name, containers)]``.
    Without a reachable engine there is nothing to stop."""
    try:
        client = engine()
    except ClipperException:
        return []
    names = {c.labels[CLIPPER_DOCKER_LABEL]
             for c in client.containers.list(all=True, filters={"label": CLIPPER_DOCKER_LABEL})}
    return [(name, DockerContainerManager(cluster_name=name).stop_all(graceful)) for name in sorted(names)]
