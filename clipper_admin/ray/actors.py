"""The Ray actors of a Ray-backed Clipper cluster. Ray only places, finds and restarts them:
each runs Clipper's own, unchanged processes, and queries go from the query frontend to the
model containers over Clipper's RPC, never through Ray.

- ``ClusterFrontends`` (one per cluster): Redis and both frontends, run on its node by the
  local backend's supervisor (which restarts any of them that dies); it also holds the model
  directories in Ray's object store, so that replicas on any node can fetch them.
- ``ModelReplica`` (one per replica): one ``python -m clipper model-container`` process,
  restarted when it exits; it dies with the actor (PR_SET_PDEATHSIG).
"""
import ctypes
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import ray

import clipper
import clipper_admin
from clipper import launch as recipe
from clipper.cluster.cluster_dir import REPLICA_METRICS_DIR
from clipper.container.metrics import TOUCH_SECONDS, file_name, read_metrics_file
from clipper.files import write_atomically
from clipper.config import Config, is_loopback
from clipper_admin.container_manager import SERVING_SETTINGS
from clipper_admin.deployers.deployer_utils import read_model_metadata
from clipper_admin.local import LocalContainerManager
from clipper_admin.ray.node_state import (
    RAY_SESSION_FILE, frontends_state_dir, node_state_dir, ray_session_runs_here, recorded_ray_session)

# The directories that hold our packages: on the nodes, where Ray unpacked them (each its
# own); a replica imports clipper, and clipper_admin if its model reports metrics.
PACKAGE_ROOTS = list(dict.fromkeys(str(Path(package.__file__).resolve().parents[1])
                                   for package in (clipper, clipper_admin)))
MAX_RESTART_DELAY = 5.0
METRICS_FORWARD_SECONDS = 1.0     # a replica's metrics reach the frontends' node this often
RAYLET_CHECK_SECONDS = 0.5
HEALTHY_RUN_SECONDS = 10.0

log = logging.getLogger(__name__)


def zip_directory(path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(Path(path).rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(path))
    return buffer.getvalue()


def where_am_i() -> dict:
    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


class _LocalFrontends(LocalContainerManager):
    """The local backend on this node, with the replica timeout of a multi-node cluster."""

    def __init__(self, replica_timeout, **kwargs):
        super().__init__(**kwargs)
        self.replica_timeout = replica_timeout

    def _cluster_config(self, *args):
        return super()._cluster_config(*args).replace(replica_timeout=self.replica_timeout)


class ClusterFrontends:
    """Redis and both frontends on the node Ray chose, plus the cluster's model files."""

    def __init__(self, settings: dict):
        self.settings = dict(settings)
        self.dir = node_state_dir(settings["namespace"], settings["cluster_name"])
        ray_session = ray.get_runtime_context().get_session_name()
        self._refuse_another_ray_clusters(ray_session)
        (self.dir / RAY_SESSION_FILE).write_text(ray_session)     # before any server runs here
        self.settings["host"] = settings["host"] or ray.util.get_node_ip_address()
        if not is_loopback(self.settings["host"]) and (not settings["admin_token"] or settings["rpc_auth"] == "open"):
            raise ValueError(
                f"The frontends would listen on {self.settings['host']}, beyond loopback, without "
                "an admin token or without RPC authentication: pass admin_token= (or set "
                "CLIPPER_ADMIN_TOKEN) and keep rpc_auth 'auto' or 'curve'")
        # The local backend, with its state on this node: it runs and restarts the processes.
        os.environ["CLIPPER_STATE_DIR"] = str(frontends_state_dir(self.dir))
        self.local = _LocalFrontends(
            settings["replica_timeout"], cluster_name=settings["cluster_name"], host=self.settings["host"],
            clipper_query_port=settings["query_port"], clipper_management_port=settings["management_port"],
            clipper_rpc_port=settings["rpc_port"], clipper_metric_port=settings["metrics_port"],
            admin_token=settings["admin_token"], rpc_auth=settings["rpc_auth"],
            **{limit: settings[limit] for limit in SERVING_SETTINGS})
        if self.local.cluster.is_running():       # this actor was restarted, its processes were not
            self.local.connect()
        else:
            try:
                self.local.start_clipper(cache_size=settings["cache_size"],
                                         qf_http_timeout_content=settings["body_timeout"])
            except BaseException:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise
        self.models = {}
        self._reload_models()

    def _refuse_another_ray_clusters(self, ray_session: str) -> None:
        """This node's directory (servers, Redis's data, models) is used only by the Ray cluster
        that started them while that cluster has a node here: its session is the same on every
        node and outlives a node restart, unlike node IDs, and unlike the GCS address, which
        two Ray clusters in two network namespaces can share. Another Ray cluster on this
        machine, with the same TMPDIR, namespace and cluster name, would otherwise serve (and
        stop) the servers, or, with them down, take their state over. A session whose nodes
        are all gone from here (a Ray cluster stopped and started again) leaves it to the next."""
        theirs = recorded_ray_session(self.dir)
        if theirs is not None and theirs != ray_session and ray_session_runs_here(theirs):
            raise ValueError(
                f"Clipper cluster '{self.settings['cluster_name']}' of namespace '{self.settings['namespace']}' "
                f"on this machine belongs to another Ray cluster, which runs here too ({theirs}; this one "
                f"is {ray_session}), with its state in {self.dir}. Give this Ray cluster's nodes another "
                f"TMPDIR, or use another cluster_name")

    def info(self) -> dict:
        return {**self.settings, **where_am_i()}

    def replica_config(self) -> dict:
        """What a model container needs of the cluster's Config (not the frontend's secret key)."""
        config = Config(**self.local.cluster.settings()["config"])
        return config.replace(rpc_server_secret_key="", admin_token="").as_dict()

    # ---- model files, in the object store (and on this node's disk, for a restart) ----
    def _model_file(self, key):
        return self.dir / "models" / f"{key}.zip"

    def put_model(self, key, data: bytes) -> None:
        path = self._model_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.models[key] = ray.put(data)

    def model(self, key):
        """``[ObjectRef]`` of the zipped model directory (in a list, so Ray does not fetch it)."""
        return [self.models[key]] if key in self.models else []

    def _reload_models(self):
        for path in sorted((self.dir / "models").glob("*.zip")):
            self.models[path.name[:-len(".zip")]] = ray.put(path.read_bytes())

    # ---- the replicas' metrics, forwarded by their actors (clipper.container.metrics) ----
    def _metrics_file(self, label):
        return self.local.cluster.path / REPLICA_METRICS_DIR / file_name(label)

    def put_replica_metrics(self, label, content: bytes) -> None:
        """Replace the replica's file in the local backend's directory, which the query
        frontend serves (and reads as the model's); each call also tells it that the
        replica lives."""
        write_atomically(self._metrics_file(label), content)

    def remove_replica_metrics(self, label) -> None:
        self._metrics_file(label).unlink(missing_ok=True)

    # ---- logs and stopping ----
    def logs(self) -> dict:
        return {f"{self.settings['cluster_name']}-{log.name}": log.read_text(errors="replace")
                for log in sorted(self.local.cluster.logs.glob("*.log"))}

    def stop(self, graceful=True) -> None:
        self.local.stop_all(graceful)
        shutil.rmtree(self.dir, ignore_errors=True)


def _die_with_parent():
    """In the child, before exec: SIGKILL when the actor's process goes, however it goes."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ModelReplica:
    """One model container process on the node Ray chose; restarted when it exits."""

    def __init__(self, settings: dict, name: str, version: str, input_type: str, model_key: str,
                 replica: int):
        self.label = f"{name}_{version}-{replica}"
        frontends = ray.get_actor(f"{settings['cluster_name']}/frontends", namespace=settings["namespace"])
        config = Config(**ray.get(frontends.replica_config.remote()))
        refs = ray.get(frontends.model.remote(model_key))
        if not refs:
            raise ValueError(f"The files of model {name}:{version} are gone from the cluster; "
                             "deploy the version again")
        self.dir = node_state_dir(settings["namespace"], settings["cluster_name"]) / "replicas" / self.label
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "model").mkdir(parents=True)
        with zipfile.ZipFile(io.BytesIO(ray.get(refs[0]))) as archive:
            archive.extractall(self.dir / "model")
        self.log_path = self.dir / "model-container.log"
        # The replica writes its metrics on this node; a thread forwards them to the frontends'.
        (self.dir / "metrics").mkdir()
        self.metrics_path = self.dir / "metrics" / file_name(self.label)
        self.frontends = frontends
        self.forwarding = threading.Lock()      # a stop removes the forwarded file after the last put
        self.launch = recipe.model_container(config.replace(metrics_dir=str(self.dir / "metrics")), name,
                                             version, input_type, str(self.dir / "model"), replica_name=self.label)
        # The interpreter that pickled the model if this node has it, else the actor's own.
        python = read_model_metadata(str(self.dir / "model")).get("python")
        self.command = self.launch.argv(python if python and os.access(python, os.X_OK) else sys.executable)
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPPER_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*PACKAGE_ROOTS, env.get("PYTHONPATH")]))
        self.env = {**env, **self.launch.env}
        self.process = None
        self.failures = 0
        self.exit_code = None
        self.stopping = False
        self._start()
        threading.Thread(target=self._keep_running, daemon=True).start()
        threading.Thread(target=self._exit_with_raylet, args=(os.getppid(),), daemon=True).start()
        threading.Thread(target=self._forward_metrics, daemon=True).start()

    def _start(self):
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=str(self.dir),
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def _keep_running(self):
        while not self.stopping:
            code = self.process.wait()
            if self.stopping:
                return
            ran = time.monotonic() - self.started_at
            self.failures = 0 if ran >= HEALTHY_RUN_SECONDS else self.failures + 1
            self.exit_code = code
            time.sleep(0 if not self.failures else min(MAX_RESTART_DELAY, 0.1 * 2 ** self.failures))
            if not self.stopping:
                self._start()

    def _forward_metrics(self):
        """The replica's metrics file to the frontends' node when it changed, and at least
        every TOUCH_SECONDS while the replica runs (which keeps it listed there)."""
        sent, sent_at = None, 0.0
        while not self.stopping:
            time.sleep(METRICS_FORWARD_SECONDS)
            try:
                if os.lstat(self.metrics_path).st_mtime < time.time() - TOUCH_SECONDS * 2:
                    continue              # its replica died: the frontends' copy goes stale too
                content = read_metrics_file(self.metrics_path)
            except ValueError as error:   # the model put something else there
                log.warning("not forwarding %s: %s", self.metrics_path, error)
                continue
            except OSError:
                continue                  # not written yet, or the replica is restarting
            if content != sent or time.monotonic() - sent_at >= TOUCH_SECONDS:
                with self.forwarding:
                    if self.stopping:
                        return
                    self.frontends.put_replica_metrics.remote(self.label, content)
                sent, sent_at = content, time.monotonic()

    def _exit_with_raylet(self, raylet_pid):
        """An idle actor does not notice that its node's raylet died, and Ray has already
        started it again elsewhere: a duplicate that nobody would stop. Go, and the model
        container with it (our parent is the raylet while it lives)."""
        while os.getppid() == raylet_pid:
            time.sleep(RAYLET_CHECK_SECONDS)
        self.stopping = True
        self.process.kill()
        os._exit(1)

    def info(self) -> dict:
        return {**where_am_i(), "label": self.label, "process_pid": self.process.pid,
                "failures": self.failures, "exit_code": self.exit_code, "gpus": len(ray.get_gpu_ids()),
                "cuda_visible_devices": self.env.get("CUDA_VISIBLE_DEVICES")}

    def log(self, last_lines=None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-last_lines:]) if last_lines else text

    def stop(self, graceful=True) -> None:
        with self.forwarding:
            self.stopping = True
            self.frontends.remove_replica_metrics.remote(self.label)
        self.process.terminate()
        try:
            self.process.wait(self.launch.stop_grace if graceful else 0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

