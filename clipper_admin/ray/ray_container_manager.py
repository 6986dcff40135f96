"""The Ray backend: a Clipper cluster spread over the nodes of a Ray cluster.

Ray is the control plane only. The frontends (Redis, management and query frontend, run by
the local backend's supervisor) are one detached actor, each model replica another; Ray places
them (CPUs, GPUs, custom resources), restarts them, and moves them when a node dies. Queries go
from the query frontend to the replicas over Clipper's RPC, and Clipper's heartbeats, not
Ray, decide whether a replica is alive. The actors are named ``<cluster>/...`` in a Ray
namespace, so any process on any node finds the cluster. Model directories travel through
Ray's object store. Needs Ray (requirements-ray.txt, Python 3.10+) on every node.
"""
import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from clipper import launch as recipe
from clipper.config import Config
from clipper.rpc import auth
from clipper_admin.container_manager import (
    CLIPPER_INTERNAL_MANAGEMENT_PORT, CLIPPER_INTERNAL_METRIC_PORT, CLIPPER_INTERNAL_QUERY_PORT,
    CLIPPER_INTERNAL_RPC_PORT, FAILURES_REPORTED, SERVING_SETTINGS, START_HINT, ContainerManager,
    checked_cluster_name, public_host_for, write_log_copy)
from clipper_admin.exceptions import ClipperException, MissingDependency, stop_command
from clipper_admin.ray.node_state import (
    frontends_state_dir, private_root, private_root_path, ray_session_runs_here, recorded_ray_session)

logger = logging.getLogger(__name__)

NAMESPACE = "clipper"
IMAGE_PREFIX = "ray-object-store:"
STOP_TIMEOUT_SECONDS = recipe.CLUSTER_STOP_SECONDS + 10
# Clipper drops a silent replica after this long: well before Ray declares its node dead
# (about 15 s with Ray's defaults), and longer than a batch of most models takes.
DEFAULT_REPLICA_TIMEOUT = 5.0
# A replica that has not answered within this long is starting, or waiting for resources.
INFO_TIMEOUT_SECONDS = 1.0
# A replica still silent after this long, while the resources it needs are not free, is
# reported as waiting for them. (Ray's public API does not say whether an actor is placed:
# one that is starting on its node also holds its resources.)
WAITING_REPORT_SECONDS = 10.0
# Where `ray start` records the address of the cluster it started on this machine.
RAY_CURRENT_CLUSTER_FILE = "ray_current_cluster"


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise MissingDependency("The Ray backend (Python 3.10+)", "ray", "ray") from None
    return ray


def connect_ray(address=None, namespace=NAMESPACE):
    """Join the Ray cluster at ``address`` (default $RAY_ADDRESS, else the one `ray start`
    started on this machine); never start a Ray of our own, which would end with the script.
    Our packages travel to the nodes with the job (py_modules): the nodes need only the
    requirements. (If the program joined Ray itself, the nodes must have this project.)"""
    import clipper
    import clipper_admin
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    # Not Ray's "auto", which reads the record of /tmp/ray whoever wrote it (_recorded_ray_address).
    address = address or os.environ.get("RAY_ADDRESS") or _recorded_ray_address()
    if not address:
        raise ClipperException("No Ray cluster of yours recorded on this machine. Start one with "
                               "`ray start --head`, or pass its address (address= or RAY_ADDRESS)")
    if "://" not in address and not _gcs_answers(address):       # not a ray:// client address
        raise ClipperException(f"No Ray cluster answers at {address!r} (nothing listens there). Start one "
                               "with `ray start --head`, or pass its address (address= or RAY_ADDRESS)")
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"py_modules": [clipper, clipper_admin]})
    except (ConnectionError, RuntimeError) as error:
        raise ClipperException(f"Cannot reach a Ray cluster at {address!r} ({error}). Start one with "
                               "`ray start --head`, or pass its address (address= or RAY_ADDRESS)") from None
    return ray


class RayContainerManager(ContainerManager):
    runs_images = False   # a model is a directory from build_model

    def __init__(self, address=None, cluster_name="default-cluster", namespace=NAMESPACE,
                 clipper_query_port=CLIPPER_INTERNAL_QUERY_PORT,
                 clipper_management_port=CLIPPER_INTERNAL_MANAGEMENT_PORT,
                 clipper_rpc_port=CLIPPER_INTERNAL_RPC_PORT,
                 clipper_metric_port=CLIPPER_INTERNAL_METRIC_PORT, host=None, admin_token=None,
                 max_body_size=Config.max_body_size, rpc_auth=auth.AUTO, frontend_resources=None,
                 replica_num_cpus=1, replica_num_gpus=0, replica_resources=None,
                 replica_timeout=DEFAULT_REPLICA_TIMEOUT, max_batch_size=Config.max_batch_size,
                 header_timeout=Config.header_timeout, max_output_size=Config.max_output_size,
                 busy_poll_us=Config.busy_poll_us, max_queued_inputs=Config.max_queued_inputs):
        """``address``: the Ray cluster (default $RAY_ADDRESS, else the one on this machine).
        ``host``: where the frontends listen (default: their node's Ray address; beyond
        loopback only with ``admin_token`` and ``rpc_auth`` not "open"; see LocalContainerManager
        for ``rpc_auth``). ``frontend_resources``: Ray resources that choose
        the frontends' node (default: the head node). ``replica_num_cpus``,
        ``replica_num_gpus``, ``replica_resources``: what each model replica needs.
        ``replica_timeout``: seconds of silence after which the query frontend drops a replica
        (one whose machine vanished without closing its connection); keep it longer than the
        longest batch takes, as a busy replica sends nothing until its batch is done.
        ``max_batch_size``, ``header_timeout``, ``max_output_size``, ``busy_poll_us``,
        ``max_queued_inputs``: as for LocalContainerManager."""
        super().__init__(checked_cluster_name(cluster_name), None, clipper_query_port, clipper_management_port,
                         clipper_rpc_port, clipper_metric_port, None, None, admin_token,
                         max_body_size, rpc_auth, max_batch_size=max_batch_size,
                         header_timeout=header_timeout, max_output_size=max_output_size,
                         busy_poll_us=busy_poll_us, max_queued_inputs=max_queued_inputs)
        self.address = address
        self.namespace = namespace
        self.host = host            # None: the frontends' node's Ray address
        self.replica_timeout = replica_timeout
        self.frontend_resources = frontend_resources or {"node:__internal_head__": 0.001}
        self.replica_options = {"num_cpus": replica_num_cpus, "num_gpus": replica_num_gpus,
                                "resources": replica_resources or {}}
        self._silent_since = {}     # replica actor name -> when it was first seen not answering
        self._needs = {}            # (name, version) -> Ray options of the replicas started here

    # ---- Ray ----
    @property
    def _ray(self):
        return connect_ray(self.address, self.namespace)

    def _actor_options(self, name, **options):
        # Detached: the cluster outlives the script, as Clipper's containers do. Restarted
        # without end, also on another node when theirs dies.
        return dict(name=f"{self.cluster_name}/{name}", namespace=self.namespace,
                    lifetime="detached", max_restarts=-1, **options)

    def _named(self, prefix):
        """``{actor name: handle}`` of this cluster's actors whose name starts with ``prefix``."""
        ray = self._ray
        wanted = f"{self.cluster_name}/{prefix}"
        found = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == self.namespace and entry["name"].startswith(wanted):
                try:
                    found[entry["name"]] = ray.get_actor(entry["name"], namespace=self.namespace)
                except ValueError:          # it died since it was listed
                    continue
        return found

    def _frontends(self):
        return self._named("frontends").get(f"{self.cluster_name}/frontends")

    # ---- cluster ----
    def start_clipper(self, query_frontend_image=None, mgmt_frontend_image=None,
                      frontend_exporter_image=None, cache_size=33554432, qf_http_thread_pool_size=1,
                      qf_http_timeout_request=5, qf_http_timeout_content=300,
                      num_frontend_replicas=1):
        if num_frontend_replicas != 1:
            raise ClipperException("The Ray backend runs exactly one query frontend")
        ray = self._ray             # first: without Ray, MissingDependency says what to install
        from clipper_admin.ray.actors import ClusterFrontends
        if self._frontends() is not None:
            raise ClipperException(
                f"Clipper cluster '{self.cluster_name}' is already running on this Ray cluster. "
                "Use connect() to use it, or stop it with: " + stop_command(self.cluster_name))
        if self.admin_token is None:
            self.admin_token = os.environ.get("CLIPPER_ADMIN_TOKEN", "")
        settings = {"cluster_name": self.cluster_name, "namespace": self.namespace, "host": self.host,
                    "query_port": self.clipper_query_port, "management_port": self.clipper_management_port,
                    "rpc_port": self.clipper_rpc_port, "metrics_port": self.clipper_metric_port,
                    "admin_token": self.admin_token, "rpc_auth": self.rpc_auth,
                    "replica_timeout": float(self.replica_timeout),
                    "cache_size": cache_size, "body_timeout": qf_http_timeout_content,
                    **{limit: getattr(self, limit) for limit in SERVING_SETTINGS}}
        frontends = ray.remote(ClusterFrontends).options(**self._actor_options(
            "frontends", num_cpus=0, resources=self.frontend_resources)).remote(settings)
        try:
            self._adopt(ray.get(frontends.info.remote(), timeout=recipe.START_TIMEOUT_SECONDS))
        except BaseException as error:
            ray.kill(frontends, no_restart=True)
            if isinstance(error, ray.exceptions.GetTimeoutError):
                raise ClipperException(
                    f"The frontends did not start within {recipe.START_TIMEOUT_SECONDS} s: does a node offer "
                    f"the resources {self.frontend_resources}?") from None
            if isinstance(error, ray.exceptions.RayError):
                raise ClipperException(f"Clipper did not start: {_cause(error)}") from None
            raise
        logger.info("Clipper cluster '%s' started on Ray (frontends on node %s)",
                    self.cluster_name, self.host)

    def _adopt(self, info):
        self.host = info["host"]
        self.public_host = public_host_for(info["host"])
        self.clipper_query_port = info["query_port"]
        self.clipper_management_port = info["management_port"]
        self.clipper_rpc_port = info["rpc_port"]
        self.clipper_metric_port = info["metrics_port"]
        if self.admin_token is None:
            self.admin_token = info["admin_token"]

    def connect(self):
        frontends = self._frontends()
        if frontends is None:
            raise ClipperException(f"No running Clipper cluster named '{self.cluster_name}' in the "
                                   f"Ray namespace '{self.namespace}'. " + START_HINT)
        self._adopt(self._ray.get(frontends.info.remote(), timeout=recipe.START_TIMEOUT_SECONDS))

    def stop_all(self, graceful=True):
        stopped = self._stop_actors(self._replicas_named(""), graceful)
        frontends = self._frontends()
        if frontends is not None:
            stopped += self._stop_actors({f"{self.cluster_name}/frontends": frontends}, graceful)
        if stopped:
            logger.info("Stopped Clipper cluster '%s' on Ray (%d actors)", self.cluster_name, stopped)
        return stopped

    def _stop_actors(self, handles, graceful=True):
        """Stop each actor's processes, then the actor; ``handles``: ``{actor name: handle}``."""
        if not handles:
            return 0
        ray = self._ray
        # Those still starting or waiting for resources would not answer: they are only killed.
        running = self._answering(handles.values())
        ray.wait([handle.stop.remote(graceful) for handle in running], num_returns=len(running),
                 timeout=STOP_TIMEOUT_SECONDS)
        for handle in handles.values():
            ray.kill(handle, no_restart=True)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while set(handles) & set(self._named("")) and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(handles)

    def _answering(self, handles):
        """The actors (of ``handles``) that are up: they answer within INFO_TIMEOUT_SECONDS."""
        ray = self._ray
        calls = {handle.info.remote(): handle for handle in handles}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=INFO_TIMEOUT_SECONDS)
        return [calls[call] for call in ready]

    # ---- models ----
    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None):
        """Put the model directory (with ``pkgs_to_install`` installed into it) in Ray's object
        store, held by the frontends' actor; return its name there."""
        from clipper_admin.ray.actors import zip_directory
        frontends = self._frontends()
        if frontends is None:
            raise ClipperException(f"Clipper cluster '{self.cluster_name}' is not running")
        with tempfile.TemporaryDirectory(prefix="clipper-model-") as staging:
            target = os.path.join(staging, "model")
            shutil.copytree(model_data_path, target)
            if pkgs_to_install:
                result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                                         os.path.join(target, "modules"), *pkgs_to_install],
                                        capture_output=True, text=True)
                if result.returncode:
                    raise ClipperException(f"pip could not install {pkgs_to_install}:\n{result.stderr[-2000:]}")
            data = zip_directory(target)
        key = f"{name}-{version}-{hashlib.sha256(data).hexdigest()[:16]}"
        self._ray.get(frontends.put_model.remote(key, data))
        return IMAGE_PREFIX + key

    def deploy_model(self, name, version, input_type, image, num_replicas=1, num_gpus=None):
        self.set_num_replicas(name, version, input_type, image, num_replicas, num_gpus)

    def set_num_replicas(self, name, version, input_type, image, num_replicas, num_gpus=None):
        """``num_gpus``: GPUs for each new replica (Ray's logical GPUs; None: as many as the
        version's running replicas have, else the manager's ``replica_num_gpus``)."""
        from clipper_admin.ray.actors import ModelReplica
        if not str(image).startswith(IMAGE_PREFIX):
            raise ClipperException(f"The Ray backend runs models built by its build_model (deploy_python_closure "
                                   f"does that); {image!r} is not one")
        ray = self._ray
        current = self._replicas(name, version)
        if num_gpus is None and current:
            running = self._answering(current.values())
            if running:
                num_gpus = ray.get(running[0].info.remote())["gpus"]
        settings = {"cluster_name": self.cluster_name, "namespace": self.namespace}
        for index in range(num_replicas):
            if index not in current:
                # SPREAD: replicas go to different nodes where they can; never pinned to a node.
                needs = self._replica_needs(name, version, num_gpus)
                options = self._actor_options(_replica_name(name, version, index),
                                              scheduling_strategy="SPREAD", **needs)
                _retry_while_name_taken(lambda: ray.remote(ModelReplica).options(**options).remote(
                    settings, name, str(version), input_type, image[len(IMAGE_PREFIX):], index))
        self._stop_actors({actor_name: handle for actor_name, handle
                           in self._replicas_named(f"{name}/{version}/").items()
                           if int(actor_name.rsplit("/", 1)[1]) >= num_replicas})

    def _replicas_named(self, prefix):
        return self._named(f"model/{prefix}")

    def _replicas(self, name, version):
        """``{replica index: handle}`` of one model version."""
        return {int(actor_name.rsplit("/", 1)[1]): handle
                for actor_name, handle in self._replicas_named(f"{name}/{version}/").items()}

    def get_num_replicas(self, name, version):
        return len(self._replicas(name, version))

    def stop_models(self, models):
        for name, versions in models.items():
            for version in versions:
                self._stop_actors(self._replicas_named(f"{name}/{version}/"))

    def stop_all_model_containers(self):
        self._stop_actors(self._replicas_named(""))

    def replica_info(self, name, version):
        """``{replica index: {node_id, node_ip, pid, process_pid, cuda_visible_devices, ...}}``
        of the replicas that are running (not those starting or waiting for resources)."""
        ray = self._ray
        calls = {index: handle.info.remote() for index, handle in self._replicas(name, version).items()}
        ready, _ = ray.wait(list(calls.values()), num_returns=len(calls), timeout=INFO_TIMEOUT_SECONDS)
        found = {}
        for index, call in calls.items():
            if call in ready:
                try:
                    found[index] = ray.get(call)
                except ray.exceptions.RayError:
                    continue
        return found

    def replica_failure(self, name, version):
        ray = self._ray
        for index, handle in sorted(self._replicas(name, version).items()):
            call = handle.info.remote()
            ready, _ = ray.wait([call], timeout=INFO_TIMEOUT_SECONDS)
            actor_name = f"{self.cluster_name}/{_replica_name(name, version, index)}"
            if not ready:
                silent_since = self._silent_since.setdefault(actor_name, time.monotonic())
                missing = self._missing_resources(name, version)
                if missing and time.monotonic() - silent_since > WAITING_REPORT_SECONDS:
                    return (f"Replica {index} is waiting for resources no node has free ({missing}); "
                            "it starts when they are free. Lower num_replicas, or add nodes.")
                continue
            self._silent_since.pop(actor_name, None)
            try:
                info = ray.get(call)
            except ray.exceptions.RayError as error:
                return f"Replica {index} could not start: {_cause(error)}"
            if info["failures"] >= FAILURES_REPORTED:
                log = ray.get(handle.log.remote(12))
                return (f"Its process on node {info['node_ip']} keeps exiting (exit code "
                        f"{info['exit_code']}). Last lines of its log:\n{log}")
        return None

    def _replica_needs(self, name, version, num_gpus=None):
        """The Ray options of a new replica; remembered, to say later what it waits for."""
        needs = dict(self.replica_options)
        if num_gpus is not None:
            needs["num_gpus"] = num_gpus
        self._needs[(name, str(version))] = needs
        return needs

    def _missing_resources(self, name, version):
        """What a replica of this version needs beyond what the Ray cluster has free, as text
        ('' if nothing)."""
        free = self._ray.available_resources()
        options = self._needs.get((name, str(version)), self.replica_options)
        needs = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options["resources"]}
        short = {name: amount for name, amount in needs.items() if amount and free.get(name, 0) < amount}
        return ", ".join(f"{name}: needs {amount}, {free.get(name, 0):g} free" for name, amount in short.items())

    # ---- logs ----
    def get_logs(self, logging_dir):
        ray = self._ray
        os.makedirs(logging_dir, exist_ok=True)
        texts = {}
        frontends = self._frontends()
        if frontends is not None:
            texts.update(ray.get(frontends.logs.remote(), timeout=STOP_TIMEOUT_SECONDS))
        calls = {handle.log.remote(): actor_name for actor_name, handle in self._replicas_named("").items()}
        # Replicas still starting or waiting for resources have no log yet.
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=INFO_TIMEOUT_SECONDS * 5)
        for call in ready:
            label = calls[call].split("/", 2)[2].replace("/", "_")
            try:
                texts[f"{self.cluster_name}-model-{label}.log"] = ray.get(call)
            except ray.exceptions.RayError:
                continue
        paths = []
        for file_name, text in sorted(texts.items()):
            paths.append(write_log_copy(logging_dir, file_name, text.encode("utf-8", "replace")))
        return paths


def _replica_name(name, version, index):
    # '/' cannot occur in model names or versions (DNS-1123 labels).
    return f"model/{name}/{version}/{index}"


def _retry_while_name_taken(create, timeout=STOP_TIMEOUT_SECONDS):
    """Create a named actor; a name is freed a moment after its previous actor was killed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return create()
        except ValueError as error:
            if "already taken" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _cause(error):
    """What an actor's exception said, without Ray's traceback or the exception's class."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        raised = _RAISED.match(line)
        if raised:
            return raised.group(1)
    return lines[-1] if lines else type(error).__name__


_RAISED = re.compile(r"^[\w.]*(?:Error|Exception): (.+)$")


def _local_ray_address():
    """$RAY_ADDRESS, else the cluster `ray start` recorded on this machine, if it answers."""
    address = os.environ.get("RAY_ADDRESS") or _recorded_ray_address()
    return address if address and _gcs_answers(address) else None


def _gcs_answers(address) -> bool:
    """Whether something listens at ``host:port``: ray.init retries a GCS that does not
    answer for minutes, saying only, in Ray's log lines, that it cannot connect."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def _recorded_ray_address():
    """The address in the record `ray start` leaves in /tmp/ray, if this user wrote it. /tmp is
    shared: another user who made /tmp/ray first (or runs a Ray cluster of their own) chooses
    what the record says, and a Ray driver runs what that cluster's actors send back
    (closeClipper.py, stopping every backend's clusters, would have joined theirs)."""
    record = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray", RAY_CURRENT_CLUSTER_FILE)
    try:
        with open(record) as f:
            owner = os.fstat(f.fileno()).st_uid
            if owner != os.getuid():
                logger.warning("Ignoring %s, which user %d wrote, not you: to reach that Ray cluster, "
                               "set RAY_ADDRESS", record, owner)
                return None
            return f.read().strip()
    except OSError:
        return None


def stop_all_ray_clusters(graceful=True, names=None, namespace=NAMESPACE, *, required=False):
    """Stop every Clipper cluster (or those in ``names``) on the reachable Ray cluster, if Ray
    is installed and one runs (no Ray cluster running: none of ours runs, ``required`` or not).

    Returns ``[(cluster_name, actors_stopped), ...]``.
    """
    if importlib.util.find_spec("ray") is None:
        return []
    stopped = _stop_servers_left_by_gone_ray_clusters(graceful, names, namespace)
    address = _local_ray_address()
    if address is None:
        return stopped
    ray = connect_ray(address, namespace)
    found = sorted({entry["name"].split("/", 1)[0] for entry in ray.util.list_named_actors(all_namespaces=True)
                    if entry["namespace"] == namespace and "/" in entry["name"]})
    return stopped + [(name, RayContainerManager(address, name, namespace).stop_all(graceful))
                      for name in found if names is None or name in names]


def _stop_servers_left_by_gone_ray_clusters(graceful, names, namespace):
    """The frontends' servers on this machine (Redis, both frontends, their supervisor) outlive
    the Ray cluster whose actor started them, when Ray is stopped (by PID) or crashes: no actor
    finds them any more, and they keep their ports. Those of a Ray session with no node left
    here are stopped as the local backend's, and their node directory removed, as a stop_all
    would. ``[(cluster_name, processes_stopped), ...]``."""
    from clipper_admin.local.local_container_manager import stop_all_local_clusters
    if not private_root_path().exists():
        return []                 # no Ray cluster of this user's ran its frontends here (none made)
    root = private_root() / namespace
    stopped = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        session = recorded_ray_session(directory)
        if (names is not None and directory.name not in names) or session is None or ray_session_runs_here(session):
            continue            # a Ray cluster with a node here stops its own, through its actors
        with _state_dir(frontends_state_dir(directory)):
            found = stop_all_local_clusters(graceful, [directory.name])
        if found:
            shutil.rmtree(directory, ignore_errors=True)
        stopped += found
    return stopped


@contextlib.contextmanager
def _state_dir(path):
    """CLIPPER_STATE_DIR set to ``path`` for the local backend (as in the frontends' actor)."""
    before = os.environ.get("CLIPPER_STATE_DIR")
    os.environ["CLIPPER_STATE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["CLIPPER_STATE_DIR"]
        else:
            os.environ["CLIPPER_STATE_DIR"] = before
