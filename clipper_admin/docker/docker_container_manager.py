"""The Docker backend: every role of a cluster is a container on the local Docker engine.

As in clipper_admin 0.4.1, containers carry Clipper's labels, so that ``connect()``,
``stop_all()`` and closeClipper.py find a cluster again from any process, and a model image
(ours from ``build_model``, or any RPC v3 container) runs as-is, told where to connect by
Clipper's environment variables. Unlike 0.4.1, the containers use host networking and listen
on 127.0.0.1 only; the only host ports a cluster takes are its query, management, RPC and
metrics ports (Redis listens on a unix socket in a volume of the cluster); images are built
here from docker/Dockerfile (nothing is pulled from Clipper's frozen images); and crashed
containers are restarted by Docker.
"""
import dataclasses
import logging
import os
import random
import time
from collections import Counter

import docker
import docker.errors
import docker.types

from clipper import launch as recipe
from clipper.cluster import cluster_dir
from clipper.cluster.gpus import machine_gpus, pick_devices
from clipper.config import MANAGEMENT_FRONTEND, MODEL_CONTAINER, QUERY_FRONTEND, REDIS, Config, env_name
from clipper.rpc import auth
from clipper_admin.container_manager import (
    CLIPPER_DOCKER_LABEL, CLIPPER_DOCKER_PORT_LABELS, CLIPPER_INTERNAL_MANAGEMENT_PORT, CLIPPER_INTERNAL_QUERY_PORT,
    CLIPPER_INTERNAL_REDIS_PORT, CLIPPER_INTERNAL_RPC_PORT, CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL,
    CLIPPER_MODEL_CONTAINER_LABEL, CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL, ContainerManager,
    START_HINT, checked_cluster_name, create_model_container_label, log_size_from_environment, write_log_copy)
from clipper_admin.clipper_images import is_noop_image
from clipper_admin.docker.images import (
    build_model_image, default_base_image, ensure_noop_image, ensure_runtime_image, image_label)
from clipper_admin.exceptions import ClipperException, stop_command

logger = logging.getLogger(__name__)

# Clipper 0.4.1's port labels (CLIPPER_DOCKER_PORT_LABELS) are read back by connect().
PORT_LABELS = CLIPPER_DOCKER_PORT_LABELS
ROLE_LABEL = "ai.clipper.role"               # ours: which process a container runs
RUNTIME_IMAGE_LABEL = "ai.clipper.runtime.image"
# Clipper 0.4.1's label of each role's containers.
CLIPPER_ROLE_LABELS = {QUERY_FRONTEND: CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL,
                       MANAGEMENT_FRONTEND: CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL}
GPUS_LABEL = "ai.clipper.gpus"               # ours: the GPU ids a model container was given
GPUS_PER_REPLICA_LABEL = "ai.clipper.gpus_per_replica"
ADMIN_TOKEN_VARIABLE = env_name("admin_token")
MODEL_PATH_VARIABLE = env_name("model_path")
# The servers listen here; with host networking, the model containers connect here too.
LOOPBACK = "127.0.0.1"
# A replica restarted this often by Docker is failing, not starting.
FAILING_RESTARTS = 2
# The cluster's state volume, mounted in every server: Redis's socket and append-only file.
STATE_MOUNT = "/clipper"
REDIS_URL = f"unix://{STATE_MOUNT}/redis.sock"
# Another, mounted in the query frontend and every replica: only the replicas' metrics
# (clipper.container.metrics), so that a model's container cannot reach Redis.
METRICS_MOUNT = "/clipper-replica-metrics"
METRICS_DIR_VARIABLE = env_name("metrics_dir")
CONFLICT = 409                             # the engine's answer while a removal is under way
VOLUME_RELEASE_SECONDS = 30


class EngineError(ClipperException):
    """A ClipperException that is also the engine's error type of the same failure in 0.4.1
    (the subclass's other base), so Clipper-era code that catches either still does."""

    def __init__(self, msg):
        super().__init__(msg)
        self.explanation = msg

    def __str__(self):
        return self.msg


class PortInUseError(EngineError, docker.errors.APIError):
    """A port the cluster needs is taken."""


class ImageUnavailableError(EngineError, docker.errors.ImageNotFound):
    """A model image is not on the engine and cannot be pulled."""


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
    port_taken_error = PortInUseError

    def __init__(self, cluster_name="default-cluster", docker_ip_address="localhost",
                 use_centralized_log=False, fluentd_port=24224,
                 clipper_query_port=CLIPPER_INTERNAL_QUERY_PORT,
                 clipper_management_port=CLIPPER_INTERNAL_MANAGEMENT_PORT,
                 clipper_rpc_port=CLIPPER_INTERNAL_RPC_PORT, redis_ip=None,
                 redis_port=CLIPPER_INTERNAL_REDIS_PORT, prometheus_port=9090,
                 docker_network="clipper_network", extra_container_kwargs=None,
                 base_image=None, clipper_metric_port=None,
                 admin_token=None, max_body_size=Config.max_body_size, rpc_auth=auth.AUTO,
                 max_batch_size=Config.max_batch_size, header_timeout=Config.header_timeout,
                 max_output_size=Config.max_output_size, busy_poll_us=Config.busy_poll_us,
                 max_queued_inputs=Config.max_queued_inputs):
        """0.4.1's parameters, and its public attributes. Containers share the host's network,
        so ``docker_network`` and ``prometheus_port`` have no effect; Redis started here
        listens on a unix socket, so ``redis_port`` is used only with ``redis_ip``; with
        ``use_centralized_log`` no log collector is started: ``get_clipper_logs`` reads every
        container's log from Docker either way. Ours: ``clipper_metric_port`` (Prometheus;
        default: the query port + 53); ``base_image`` (default $CLIPPER_DOCKER_BASE_IMAGE,
        else python:<this minor>-slim) under the runtime image; ``admin_token``,
        ``max_body_size``, ``max_batch_size``, ``header_timeout``, ``max_output_size``,
        ``busy_poll_us``, ``max_queued_inputs`` and ``rpc_auth`` as for LocalContainerManager (with an admin token,
        a model image of your own needs ``rpc_auth="open"``: it cannot authenticate)."""
        super().__init__(cluster_name, docker_ip_address, clipper_query_port, clipper_management_port,
                         clipper_rpc_port, clipper_metric_port, redis_ip, redis_port, admin_token,
                         max_body_size, rpc_auth, max_batch_size=max_batch_size,
                         header_timeout=header_timeout, max_output_size=max_output_size,
                         busy_poll_us=busy_poll_us, max_queued_inputs=max_queued_inputs)
        self.external_redis = redis_ip is not None
        self.prometheus_port = prometheus_port
        self.docker_network = docker_network
        self.centralize_log = use_centralized_log
        # Each container's log is capped as the local backend caps each process's (0.4.1's
        # were not: a model that prints on every query filled the engine's disk).
        log_size = log_size_from_environment().get("max_log_size", Config.max_log_size)
        self.log_config = {"type": "json-file", "config": {"max-size": str(log_size), "max-file": "2"}}
        self.logging_system_instance = None
        if use_centralized_log:
            logger.warning("use_centralized_log=True: no log collector (fluentd) is started; "
                           "get_clipper_logs() reads every container's log from Docker")
        self.logger = logging.LoggerAdapter(logger, {"cluster_name": cluster_name})
        # As 0.4.1: the user's labels go to every container, with the cluster's label.
        self.extra_container_kwargs = dict(extra_container_kwargs or {})
        self.common_labels = {**self.extra_container_kwargs.pop("labels", {}), CLIPPER_DOCKER_LABEL: cluster_name}
        self.base_image = base_image or os.environ.get("CLIPPER_DOCKER_BASE_IMAGE") or default_base_image()
        self.runtime_image = None
        self._docker_client = None

    @property
    def docker_client(self):
        if self._docker_client is None:   # on first use: constructing needs no engine
            self._docker_client = engine()
        return self._docker_client

    @docker_client.setter
    def docker_client(self, client):
        self._docker_client = client

    @property
    def public_hostname(self):            # 0.4.1's name
        return self.public_host

    @public_hostname.setter
    def public_hostname(self, host):
        self.public_host = host

    # ---- containers of this cluster ----
    def _containers(self, **labels):
        wanted = {CLIPPER_DOCKER_LABEL: self.cluster_name, **labels}
        return self.docker_client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in wanted.items()]})

    def _model_containers(self, name=None, version=None):
        labels = {ROLE_LABEL: MODEL_CONTAINER}
        if name is not None:
            labels[CLIPPER_MODEL_CONTAINER_LABEL] = create_model_container_label(name, version)
        return self._containers(**labels)

    def _live_model_containers(self, name, version):
        """The version's replicas that run or that Docker restarts; not one that was stopped
        (docker stop, docker kill: the restart policy leaves it stopped)."""
        return [c for c in self._model_containers(name, version) if _is_live(c)]

    def _container_name(self, part):
        return f"{self.cluster_name}-{part}-{random.randint(0, 100000)}"

    def _run(self, launch, image=None, labels=None, device_requests=None, container_name=None):
        """A container of ``launch`` (clipper.launch): a server runs the runtime image with the
        launch's command and the cluster's state volume; a model replica runs ``image`` as-is.
        The query frontend and the replicas also mount the replicas' metrics volume.
        ``container_name``: its name (else one made of the launch's role)."""
        # As in 0.4.1, the user's extra_container_kwargs go to every container; labels and
        # environment are merged with ours, and what the cluster needs to work wins.
        kwargs = {"restart_policy": {"Name": "unless-stopped"}, "log_config": self.log_config,
                  **self.extra_container_kwargs}
        all_labels = {**self.common_labels, ROLE_LABEL: launch.role, RUNTIME_IMAGE_LABEL: self.runtime_image,
                      **{label: str(port) for label, port in self._ports().items()}, **(labels or {})}
        kwargs.update(name=container_name or self._container_name(launch.role),
                      labels=all_labels, environment={**_as_dict(kwargs.get("environment", {})), **launch.env},
                      network_mode="host", detach=True)
        kwargs.pop("network", None)        # host networking: no network to join
        if device_requests:
            kwargs["device_requests"] = device_requests
        volumes = dict(kwargs.pop("volumes", {}))
        if launch.env.get(METRICS_DIR_VARIABLE) == METRICS_MOUNT:
            volumes[self._volume("replica-metrics")] = {"bind": METRICS_MOUNT, "mode": "rw"}
        if image is not None:            # a replica: its series are labelled with its container's name
            kwargs["environment"][env_name("replica_name")] = kwargs["name"]
            return self.docker_client.containers.run(image, volumes=volumes, **kwargs)
        volumes[self._volume("state")] = {"bind": STATE_MOUNT, "mode": "rw"}
        return self.docker_client.containers.run(self.runtime_image, launch.image_command(), volumes=volumes,
                                                 **kwargs)

    def _ports(self):
        ports = {PORT_LABELS["management"]: self.clipper_management_port, PORT_LABELS["query_rest"]: self.clipper_query_port,
                 PORT_LABELS["query_rpc"]: self.clipper_rpc_port, PORT_LABELS["metric"]: self.clipper_metric_port}
        if self.external_redis:
            ports[PORT_LABELS["redis"]] = self.redis_port
        return ports

    def _volume(self, kind):
        """A volume of the cluster, labelled as its containers are, so that stop_all finds it."""
        name = f"clipper-{self.cluster_name}-{kind}"
        try:
            self.docker_client.volumes.get(name)
        except docker.errors.NotFound:
            self.docker_client.volumes.create(name, labels={CLIPPER_DOCKER_LABEL: self.cluster_name})
        return name

    @staticmethod
    def _remove(containers, graceful=True):
        for container in containers:
            role = container.labels.get(ROLE_LABEL, MODEL_CONTAINER)
            try:
                container.stop(timeout=round(recipe.STOP_GRACE_SECONDS.get(role, 0)) if graceful else 0)
                container.remove(force=True)
            except docker.errors.NotFound:
                pass                       # already gone
            except docker.errors.APIError as error:
                if error.status_code != CONFLICT:
                    raise                  # a conflict: its removal is already under way

    # ---- cluster ----
    def start_clipper(self, query_frontend_image=None, mgmt_frontend_image=None,
                      frontend_exporter_image=None, cache_size=33554432, qf_http_thread_pool_size=1,
                      qf_http_timeout_request=5, qf_http_timeout_content=300,
                      num_frontend_replicas=1):
        """Clipper's image names are accepted and ignored: every role runs the runtime image."""
        if num_frontend_replicas != 1:
            raise ClipperException("The Docker backend runs exactly one query frontend")
        checked_cluster_name(self.cluster_name)
        # Built (minutes, the first time) before the lock, which other starts wait for.
        self.runtime_image = ensure_runtime_image(self.docker_client, self.base_image)
        # Held until the cluster serves: a second start of it (or on its ports) waits, then
        # finds it running (or its ports taken).
        with cluster_dir.start_lock():
            self._start_clipper(cache_size, qf_http_timeout_content)
        logger.info("Clipper cluster '%s' started (Docker containers, image %s)",
                    self.cluster_name, self.runtime_image)

    def _start_clipper(self, cache_size, qf_http_timeout_content):
        containers = self._containers()
        if any(_is_live(container) for container in containers):
            self._refuse_stopped_servers(containers)
            raise ClipperException(
                f"Clipper cluster '{self.cluster_name}' is already running on the Docker engine. "
                "Use connect() to use it, or stop it with: " + stop_command(self.cluster_name))
        self.stop_all(graceful=False)        # leftovers of a stopped cluster: its containers, its state
        self._require_free_ports(LOOPBACK)
        # Redis started here listens on a unix socket in the cluster's state volume: it takes no
        # host port, so a Redis of the user's own on 6379 (or another cluster's) is never in
        # the way.
        redis_url = f"redis://{self.redis_ip}:{self.redis_port}" if self.external_redis else REDIS_URL
        config = self._cluster_config(cache_size, qf_http_timeout_content, LOOPBACK, redis_url).replace(
            redis_dir=STATE_MOUNT, metrics_dir=METRICS_MOUNT)
        launches = recipe.servers(config, embedded_redis=not self.external_redis)
        try:
            for launch in launches:
                self._run(launch, labels={CLIPPER_ROLE_LABELS[launch.role]: ""}
                          if launch.role in CLIPPER_ROLE_LABELS else None)
            # Redis's socket is inside the volume: the frontends answer only once it does.
            self._wait_until_serving([launch for launch in launches if launch.role != REDIS], self._start_failure)
        except BaseException:              # Ctrl-C or a failed start: leave nothing behind
            self.stop_all(graceful=False)
            raise

    def _start_failure(self):
        """The logs of the containers Docker keeps restarting, if any."""
        failing = [c for c in self._containers() if _restarts(c) >= FAILING_RESTARTS]
        return "\n".join(f"--- {c.name} ---\n{_log_tail(c)}" for c in failing) or None

    def _query_frontend(self):
        """The cluster's query frontend container: its labels and environment describe the cluster."""
        containers = self._containers()
        frontends = [c for c in containers if c.labels.get(ROLE_LABEL) == QUERY_FRONTEND]
        if not frontends:
            raise ClipperException(f"No running Clipper cluster named '{self.cluster_name}' on the "
                                   "Docker engine. " + START_HINT)
        self._refuse_stopped_servers(containers)
        return frontends[0]

    def _refuse_stopped_servers(self, containers):
        """connect() and start_clipper() agree: a cluster with a server stopped (docker stop,
        docker kill: the restart policy leaves it stopped) is neither used nor started over."""
        stopped = sorted(c.name for c in containers
                         if c.labels.get(ROLE_LABEL, MODEL_CONTAINER) != MODEL_CONTAINER and not _is_live(c))
        if stopped:
            raise ClipperException(
                f"The Clipper cluster '{self.cluster_name}' on the Docker engine is stopped "
                f"({', '.join(stopped)}: stopped, not removed). Start its containers again with: docker start "
                f"$(docker ps -aq --filter label={CLIPPER_DOCKER_LABEL}={self.cluster_name}); or "
                f"remove them with {stop_command(self.cluster_name)}, then start a new cluster")

    def connect(self):
        frontend = self._query_frontend()
        labels = frontend.labels
        self.external_redis = PORT_LABELS["redis"] in labels
        if self.external_redis:
            self.redis_port = int(labels[PORT_LABELS["redis"]])
        self.clipper_management_port = int(labels[PORT_LABELS["management"]])
        self.clipper_query_port = int(labels[PORT_LABELS["query_rest"]])
        self.clipper_rpc_port = int(labels[PORT_LABELS["query_rpc"]])
        self.clipper_metric_port = int(labels[PORT_LABELS["metric"]])
        self.runtime_image = labels[RUNTIME_IMAGE_LABEL]
        if self.admin_token is None:
            self.admin_token = _as_dict(frontend.attrs["Config"]["Env"]).get(ADMIN_TOKEN_VARIABLE, "")

    def stop_all(self, graceful=True):
        containers = self._containers()
        order = {MODEL_CONTAINER: 0, REDIS: 2}        # then the frontends, then Redis
        self._remove(sorted(containers, key=lambda c: order.get(c.labels.get(ROLE_LABEL), 1)), graceful)
        self._remove_volumes()
        if containers:
            logger.info("Stopped Clipper cluster '%s' (%d containers)", self.cluster_name, len(containers))
        return len(containers)

    def _remove_volumes(self):
        deadline = time.monotonic() + VOLUME_RELEASE_SECONDS
        for volume in self.docker_client.volumes.list(filters={"label": f"{CLIPPER_DOCKER_LABEL}={self.cluster_name}"}):
            while True:
                try:
                    volume.remove(force=True)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError as error:
                    # In use until the engine has finished removing the cluster's containers.
                    if error.status_code != CONFLICT or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def get_logs(self, logging_dir):
        os.makedirs(logging_dir, exist_ok=True)
        paths = []
        for container in self._containers():
            paths.append(write_log_copy(logging_dir, f"{container.name}.log", container.logs()))
        return paths

    # ---- models ----
    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None):
        """An image ``[registry/]<cluster>-name:version`` of the runtime image plus the model
        directory, named as 0.4.1 named it: another cluster's build of the same name:version
        never replaces it. Clipper's closure base images are not used: the runtime image
        replaces them. On Clipper's noop container, it is built on that image, as in 0.4.1."""
        tag = f"{checked_cluster_name(self.cluster_name).lower()}-{name}:{version}"   # lower-case: image names
        if container_registry:
            tag = f"{container_registry}/{tag}"
        owner = image_label(self.docker_client, tag, CLIPPER_DOCKER_LABEL)
        if owner not in (None, self.cluster_name):
            # Cluster "a" with model "b-c" and cluster "a-b" with model "c" name the same image.
            raise ClipperException(
                f"The image {tag} holds a model of the Clipper cluster '{owner}': building model "
                f"{name}:{version} of '{self.cluster_name}' under that name would replace it. Give "
                "the model (or the cluster) another name, or build with a container_registry")
        base = self._noop_image(base_image) if is_noop_image(base_image) else self._runtime_image()
        return build_model_image(self.docker_client, base, tag, model_data_path, pkgs_to_install,
                                 labels={CLIPPER_DOCKER_LABEL: self.cluster_name})

    def _runtime_image(self):
        if self.runtime_image is None:
            self.runtime_image = ensure_runtime_image(self.docker_client, self.base_image)
        return self.runtime_image

    def _noop_image(self, image):
        """Clipper's noop container ``image``: the engine's, or our own built under its name."""
        return ensure_noop_image(self.docker_client, self._runtime_image(), image)

    def deploy_model(self, name, version, input_type, image, num_replicas=1, num_gpus=0):
        """Run ``image`` as-is, ``num_replicas`` times: one from ``build_model``, or any
        container that speaks Clipper's RPC v3 and reads Clipper's environment variables.

        A version with replicas running already (another client deploying it at this moment,
        or a deploy of it that stopped half-way) is refused: they may run another model, and
        would have been counted as this deploy's. A deploy that fails or is interrupted
        (Ctrl-C) while it starts replicas removes those it started."""
        running = self._live_model_containers(name, version)
        if running:
            raise ClipperException(
                f"Replicas of model {name}:{version} already run ({', '.join(sorted(c.name for c in running))}): "
                "another client is deploying this version, or a deploy of it stopped half-way. If none "
                f"is under way, remove them with <ClipperConnection>.cm.stop_models({{'{name}': ['{version}']}})")
        started = []
        try:
            self._scale(name, version, input_type, image, num_replicas, num_gpus, started)
        except BaseException:
            self._remove_named(started)
            raise

    def _remove_named(self, names):
        """Remove the containers of these names, those that exist."""
        for container_name in names:
            try:
                self._remove([self.docker_client.containers.get(container_name)], graceful=False)
            except docker.errors.NotFound:
                pass

    def get_num_replicas(self, name, version):
        return len(self._live_model_containers(name, version))

    def set_num_replicas(self, name, version, input_type, image, num_replicas, num_gpus=None):
        """New containers get ``num_gpus`` GPUs each as device requests, the least used first.
        A stopped replica is no replica: it is removed, and counted as missing."""
        self._scale(name, version, input_type, image, num_replicas, num_gpus)

    def _scale(self, name, version, input_type, image, num_replicas, num_gpus, started=None):
        """set_num_replicas; the name of each container it starts is added to ``started``
        before the engine is asked to run it."""
        current = self._model_containers(name, version)
        if num_gpus is None:               # the version's, stopped replicas included
            num_gpus = int(current[0].labels.get(GPUS_PER_REPLICA_LABEL, 0)) if current else 0
        self._remove([c for c in current if not _is_live(c)])
        current = [c for c in current if _is_live(c)]
        try:
            devices = machine_gpus()
            pick_devices(devices, num_gpus, Counter())
        except ValueError as error:
            raise ClipperException(f"Model {name}:{version}: {error}") from None
        if num_replicas > len(current):
            # Clipper's noop container: 0.4.1 pulled it, but Clipper's registry is frozen.
            image = self._noop_image(image) if is_noop_image(image) else self._pulled(image)
        in_use = Counter(device for container in self._model_containers()
                         for device in container.labels.get(GPUS_LABEL, "").split(",") if device)
        self._remove(current[num_replicas:])
        launch = recipe.model_container(self._replica_config(), name, version, input_type, model_path="")
        # The image says where its model is (build_model's: /model), as in 0.4.1.
        launch = dataclasses.replace(launch, env={key: value for key, value in launch.env.items()
                                                  if key != MODEL_PATH_VARIABLE})
        for _ in range(num_replicas - len(current)):
            chosen = pick_devices(devices, num_gpus, in_use)
            in_use.update(chosen)
            requests_ = [docker.types.DeviceRequest(device_ids=chosen, capabilities=[["gpu"]])] if chosen else None
            container_name = self._container_name(f"{name}_{version}")
            if started is not None:
                started.append(container_name)
            self._run(launch, image=image, container_name=container_name,
                      labels={CLIPPER_MODEL_CONTAINER_LABEL: create_model_container_label(name, version),
                              GPUS_LABEL: ",".join(chosen), GPUS_PER_REPLICA_LABEL: str(num_gpus)},
                      device_requests=requests_)

    def _pulled(self, image):
        """``image``, pulled if the engine lacks it; one clear error if it cannot be had."""
        try:
            self.docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            logger.info("Pulling image %s", image)
            try:
                self.docker_client.images.pull(image)
            except docker.errors.APIError as error:
                raise ImageUnavailableError(
                    f"The image {image} is not on this Docker engine and cannot be pulled "
                    f"({error.explanation or error}). Build it with build_model (or deploy with "
                    "build_and_deploy_model), or load it into the engine: docker load -i <file>") from None
        return image

    def _replica_config(self):
        frontends = [c for c in self._containers(**{ROLE_LABEL: QUERY_FRONTEND}) if _is_live(c)]
        environment = _as_dict(frontends[0].attrs["Config"]["Env"]) if frontends else {}
        return replica_config(environment, self.clipper_rpc_port)

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


# What a model container shares with the query frontend it serves: the keys to reach its RPC
# port (none where it is open), the largest output the frontend takes in one frame, where
# the frontend reads the replicas' metrics, and how long both poll before sleeping.
SHARED_WITH_FRONTEND = (*auth.CONTAINER_KEY_FIELDS, "max_output_size", "metrics_dir", "busy_poll_us")


def replica_config(frontend_environment, rpc_port):
    """A model container's Config, from the running query frontend's environment (the
    cluster's settings, whichever manager started it)."""
    shared = {env_name(field): frontend_environment[env_name(field)] for field in SHARED_WITH_FRONTEND
              if frontend_environment.get(env_name(field))}
    return Config.load([], shared).replace(host=LOOPBACK, rpc_port=rpc_port)


def _as_dict(environment):
    """Docker takes an environment as a dict or as ["NAME=value", ...]."""
    if isinstance(environment, dict):
        return environment
    return dict(item.split("=", 1) for item in environment)


def _is_live(container):
    return container.status not in ("exited", "dead", "removing")     # paused is live


def _restarts(container):
    container.reload()
    return container.attrs.get("RestartCount", 0) + (container.status == "exited")


def _log_tail(container, lines=15):
    return container.logs(tail=lines).decode(errors="replace").rstrip()


def stop_all_docker_clusters(graceful=True, names=None, *, required=False):
    """Stop every Clipper cluster on the local Docker engine (or only those in ``names``):
    ``[(cluster_name, containers)]``. Without a reachable engine there is nothing to stop,
    unless Docker was asked for (``required``): then ClipperException says why it cannot look."""
    try:
        client = engine()
    except ClipperException:
        if required:
            raise
        return []
    # A cluster is its containers and its volumes: any may be what is left of it.
    found = {c.labels[CLIPPER_DOCKER_LABEL]
             for c in client.containers.list(all=True, filters={"label": CLIPPER_DOCKER_LABEL})}
    found |= {v.attrs["Labels"][CLIPPER_DOCKER_LABEL]
              for v in client.volumes.list(filters={"label": CLIPPER_DOCKER_LABEL})}
    return [(name, DockerContainerManager(cluster_name=name).stop_all(graceful))
            for name in sorted(found) if names is None or name in names]
