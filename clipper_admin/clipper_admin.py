"""ClipperConnection: clipper_admin 0.4.1's public API, for Python 3.9+.

Every method keeps 0.4.1's name, signature, REST call and return shape. Differences, all
on the side of doing what the caller meant: deploys and replica changes return only once
the replicas are connected (so the first query is not a default output), and a deploy of
a version that is already registered fails before any container is started.
"""
import logging
import os
import shutil
import time
import warnings

import requests

from clipper import launch as recipe
from clipper_admin import clipper_images
from clipper_admin.container_manager import (
    CONTAINERLESS_MODEL_IMAGE, ClusterAdapter, is_valid_name, package_list, replica_count, whole_number)
from clipper_admin.exceptions import ClipperException, ClusterUnavailable, UnconnectedException

logging.basicConfig(format="%(asctime)s %(levelname)-8s [%(filename)s:%(lineno)d] %(message)s",
                    datefmt="%y-%m-%d:%H:%M:%S", level=logging.INFO)
logger = logging.getLogger(__name__)

DEFAULT_LABEL = []
DEFAULT_PREDICTION_CACHE_SIZE_BYTES = 33554432
REQUEST_TIMEOUT_SECONDS = 30
# 0.4.1's scratch directory, kept for scripts that use it; nothing here writes to it.
CLIPPER_TEMP_DIR = "/tmp/clipper"
# While waiting for replicas, how long the management API may stay unreachable (or answer
# 503) before the wait gives up: the supervisor restarts a crashed management frontend or
# Redis in well under a second.
UNAVAILABLE_GRACE_SECONDS = 10.0


def _check_name(kind, value):
    if not is_valid_name(value):
        raise ClipperException(
            f"Invalid value: {value}: a model {kind} must be a valid DNS-1123 label. It must "
            "consist of lower case alphanumeric characters or '-', and must start and end with "
            "an alphanumeric character (regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?\\Z'), 63 characters at most")


def _gpus_if_asked(num_gpus, default):
    """GPUs reach the backend only when asked for (not the call's default), so a
    ContainerManager written for 0.4.1's interface (no num_gpus) keeps working."""
    return {} if num_gpus == default else {"num_gpus": num_gpus}


class ClipperConnection(object):
    def __init__(self, container_manager):
        self.connected = False
        self.cm = container_manager
        # 0.4.1's public logger: messages prefixed with the cluster's name.
        self.logger = ClusterAdapter(logger, {"cluster_name": getattr(container_manager, "cluster_identifier",
                                                                      "default-cluster")})
        self._http = requests.Session()

    # ---- plumbing ----
    def _require_connection(self):
        if not self.connected:
            raise UnconnectedException()

    def _request(self, method, url, **kwargs):
        """One HTTP call; a non-200 answer becomes ClipperException, as in 0.4.1."""
        try:
            response = self._http.request(method, url, timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)
        except requests.RequestException as error:
            raise ClusterUnavailable(f"Could not reach Clipper at {url} ({error}). Is the cluster "
                               "running? Start it with start_clipper().") from None
        if response.status_code != requests.codes.ok:
            error = ClusterUnavailable if response.status_code == 503 else ClipperException
            raise error("Received error status code: {code} and message: {msg}".format(
                code=response.status_code, msg=response.text))
        return response

    def _admin(self, operation, body):
        """POST a JSON body to the management frontend's /admin/<operation>."""
        self._require_connection()
        headers = {"Content-type": "application/json"}
        token = getattr(self.cm, "admin_token", "")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self._request("POST", f"http://{self.cm.get_admin_addr()}/admin/{operation}",
                             json=body, headers=headers)

    def _wait_for_replicas(self, name, version, num_replicas):
        """Until exactly ``num_replicas`` replicas of the version are connected. The
        management API unreachable or answering 503 (its process or Redis crashed and is
        being restarted) is waited out for UNAVAILABLE_GRACE_SECONDS: the change is already
        made, and failing here would report a deploy that serves as failed."""
        deadline = time.monotonic() + recipe.REPLICA_TIMEOUT_SECONDS
        unavailable_since = None
        while True:
            try:
                replicas = self.get_all_model_replicas(verbose=True)
            except ClusterUnavailable:
                now = time.monotonic()
                if unavailable_since is None:
                    unavailable_since = now
                if now - unavailable_since > UNAVAILABLE_GRACE_SECONDS or now > deadline:
                    raise
                time.sleep(0.1)
                continue
            unavailable_since = None
            connected = [r for r in replicas
                         if r["model_name"] == name and r["model_version"] == str(version)]
            if len(connected) == num_replicas:
                return
            failure = self.cm.replica_failure(name, version)
            if failure or time.monotonic() > deadline:
                raise ClipperException(
                    f"{len(connected)} of {num_replicas} replicas of model {name}:{version} "
                    f"connected. {failure or f'Timed out after {recipe.REPLICA_TIMEOUT_SECONDS} s.'}")
            time.sleep(recipe.READY_POLL_SECONDS)

    # ---- cluster ----
    def start_clipper(self, query_frontend_image="clipper/query_frontend:0.4.1",
                      mgmt_frontend_image="clipper/management_frontend:0.4.1",
                      frontend_exporter_image="clipper/frontend-exporter:0.4.1",
                      cache_size=DEFAULT_PREDICTION_CACHE_SIZE_BYTES, qf_http_thread_pool_size=1,
                      qf_http_timeout_request=5, qf_http_timeout_content=300,
                      num_frontend_replicas=1):
        """Start a new cluster: Redis, the management frontend and the query frontend.

        Parameters
        ----------
        query_frontend_image, mgmt_frontend_image, frontend_exporter_image : str
            Clipper's image names; accepted for compatibility and ignored (every backend runs
            this project's own runtime).
        cache_size : int
            Size of the query frontend's prediction cache in bytes; 0 turns it off.
        qf_http_thread_pool_size, qf_http_timeout_request : int
            Accepted for compatibility; the frontend is event-driven and has no thread pool.
        qf_http_timeout_content : int
            Seconds a client has to send a request body (slower bodies get 408).
        num_frontend_replicas : int
            Query frontend processes sharing the query port: the local backend runs that many
            workers (as ``LocalContainerManager(query_workers=N)``, at most 256); the Docker
            and Ray backends run one and refuse another count.

        Returns once both frontends answer; the connection is then connected.

        Raises
        ------
        ClipperException
            A cluster of this name is already running, a port is taken, or a process did not
            start (the message carries the end of its log).
        """
        cache_size = whole_number("cache_size (bytes; 0 turns the cache off)", cache_size, least=0)
        self.cm.start_clipper(query_frontend_image, mgmt_frontend_image, frontend_exporter_image,
                              cache_size, qf_http_thread_pool_size, qf_http_timeout_request,
                              qf_http_timeout_content, num_frontend_replicas)
        self.logger.info("Clipper is running")
        self.connected = True

    def connect(self):
        """Connect to a running cluster of this container manager's name and ports.

        Raises
        ------
        ClipperException
            No such cluster is running.
        """
        self.cm.connect()
        self.connected = True
        self.logger.info("Successfully connected to Clipper cluster at {}".format(self.cm.get_query_addr()))

    def stop_all(self, graceful=True):
        """Stop every process or container of the cluster (model replicas first) and forget it.

        Parameters
        ----------
        graceful : bool
            If False, kill at once instead of letting each process finish what it is doing.
        """
        self.cm.stop_all(graceful=graceful)
        self.connected = False
        self.logger.info("Stopped all Clipper cluster and all model containers")

    def get_query_addr(self):
        """The ``host:port`` that serves predictions (``POST http://<addr>/<app>/predict``).

        Raises UnconnectedException when not connected.
        """
        self._require_connection()
        return self.cm.get_query_addr()

    def get_metric_addr(self):
        """The ``host:port`` of the Prometheus metrics (``GET http://<addr>/metrics``).

        Raises UnconnectedException when not connected.
        """
        self._require_connection()
        return self.cm.get_metric_addr()

    def get_clipper_logs(self, logging_dir="clipper_logs/"):
        """Copy the log of every process of the cluster into ``logging_dir``.

        Returns
        -------
        list of str
            The absolute paths of the files written (``~`` in ``logging_dir`` is expanded).

        Raises UnconnectedException when not connected.
        """
        self._require_connection()
        return self.cm.get_logs(os.path.abspath(os.path.expanduser(logging_dir)))

    def inspect_instance(self):
        """The query frontend's metrics document (``GET /metrics``) as a dict: counters,
        meters, histograms and ratios per application and model.

        Raises UnconnectedException when not connected, ClipperException on an error answer.
        """
        self._require_connection()
        return self._request("GET", f"http://{self.cm.get_query_addr()}/metrics").json()

    # ---- applications ----
    def register_application(self, name, input_type, default_output, slo_micros):
        """Register an application, the REST endpoint ``/<name>/predict``.

        Parameters
        ----------
        name : str
            The application's name.
        input_type : str
            One of "ints", "floats", "doubles", "bytes", "strings": what its queries carry.
        default_output : str
            Returned (with ``"default": true``) when no prediction is ready in time.
        slo_micros : int
            The latency objective in microseconds: a query waits at most this long.

        Raises
        ------
        ClipperException
            The name is taken or a parameter is invalid (Clipper's message).
        """
        self._admin("add_app", {"name": name, "input_type": input_type,
                                "default_output": default_output,
                                "latency_slo_micros": slo_micros})
        self.logger.info("Application {app} was successfully registered".format(app=name))

    def unregister_application(self, name):
        """Remove an application; its links go with it.

        Raises ClipperException if no application has this name.
        """
        self._admin("delete_app", {"name": name})
        self.logger.info("Application {app} was successfully unregistered".format(app=name))

    def delete_application(self, name):
        """Deprecated alias of ``unregister_application``."""
        warnings.warn("delete_application has been deprecated, please use unregister_application",
                      DeprecationWarning)
        self.unregister_application(name)

    def link_model_to_app(self, app_name, model_name):
        """Route the application's queries to the current version of a model.

        An application is linked to at most one model; both must have the same input type.

        Raises ClipperException when the app or model does not exist, the input types differ,
        or another model is already linked.
        """
        self._admin("add_model_links", {"app_name": app_name, "model_names": [model_name]})
        self.logger.info("Model {model} is now linked to application {app}".format(model=model_name, app=app_name))

    def unlink_model_from_app(self, app_name, model_name):
        """Remove the link between an application and a model.

        Raises ClipperException when there is no such link.
        """
        self._admin("delete_model_links", {"app_name": app_name, "model_names": [model_name]})
        self.logger.info("Model {model} is now removed to application {app}".format(model=model_name, app=app_name))

    def get_all_apps(self, verbose=False):
        """The registered applications.

        Returns
        -------
        list
            Their names, or with ``verbose=True`` a dict per application (name, input_type,
            default_output, latency_slo_micros, linked_models).
        """
        return self._admin("get_all_applications", {"verbose": verbose}).json()

    def get_app_info(self, name):
        """One application's dict (as ``get_all_apps(verbose=True)``), or None if it does not exist."""
        info = self._admin("get_application", {"name": name}).json()
        return info or None

    def get_linked_models(self, app_name):
        """The names of the models linked to an application (a list of at most one).

        Raises ClipperException if the application does not exist.
        """
        return self._admin("get_linked_models", {"app_name": app_name}).json()

    # ---- models ----
    def build_and_deploy_model(self, name, version, input_type, model_data_path, base_image,
                               labels=None, container_registry=None, num_replicas=1,
                               batch_size=-1, pkgs_to_install=None, num_gpus=0):
        """``build_model`` followed by ``deploy_model``; see both."""
        self._require_connection()
        image = self.build_model(name, version, model_data_path, base_image, container_registry,
                                 pkgs_to_install)
        try:
            self.deploy_model(name, version, input_type, image, labels, num_replicas, batch_size,
                              num_gpus)
        except BaseException:
            self._discard_unused_build(name, version, image)
            raise

    def _discard_unused_build(self, name, version, image):
        """A deploy refused before its version took this build (a bad input type, a count out
        of range, Ctrl-C) leaves nothing behind: each refused try kept a copy of the model."""
        discard = getattr(self.cm, "discard_build", None)    # (not in 0.4.1's interface)
        if discard is None:
            return
        try:
            info = self.get_model_info(name, version)
            if info is None or info.get("container_name") != image:
                discard(image)
        except ClipperException as error:        # the refusal is the news, not this
            self.logger.warning("Could not remove the build of %s:%s: %s", name, version, error)

    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None):
        """Package a model directory for deployment.

        Parameters
        ----------
        name, version : str
            The model's name and version (DNS-1123 labels: lower-case letters, digits, '-').
        model_data_path : str
            A directory holding the model (for a closure, its ``func.pkl``).
        base_image : str
            Clipper's base image name; the Docker backend uses its own runtime image instead.
            Clipper's noop container (``<registry>/noop-container:<tag>``) makes a model that
            answers "1.0" to every input, as that image does (``model_data_path`` is unused).
        container_registry : str, optional
            Docker backend: a registry prefix for the image name.
        pkgs_to_install : list of str, optional
            pip packages the model needs, installed with it.

        Returns
        -------
        str
            What ``deploy_model`` takes as ``image``: a Docker image name, or on the local
            backend the path of the packaged model directory.

        Raises ClipperException when a name is invalid or a package cannot be installed.
        """
        version = str(version)
        _check_name("name", name)
        _check_name("version", version)
        pkgs_to_install = package_list(pkgs_to_install)
        if self.connected and self.get_model_info(name, version) is not None:
            # Its replicas would load the new build at their next start.
            raise ClipperException(f"model with name '{name}' and version '{version}' already exists")
        if not clipper_images.is_noop_image(base_image):
            return self.cm.build_model(name, version, model_data_path, base_image,
                                       container_registry, pkgs_to_install)
        # Clipper's noop container ignores the model directory: serve its answers instead.
        noop_dir = clipper_images.noop_model_directory()
        try:
            return self.cm.build_model(name, version, noop_dir, base_image, container_registry,
                                       pkgs_to_install)
        finally:
            shutil.rmtree(noop_dir, ignore_errors=True)

    def deploy_model(self, name, version, input_type, image, labels=None, num_replicas=1,
                     batch_size=-1, num_gpus=0):
        """Register a new model version, make it current and start its replicas.

        Parameters
        ----------
        name, version : str
            The model's name and a new version (DNS-1123 labels).
        input_type : str
            "ints", "floats", "doubles", "bytes" or "strings".
        image : str
            What ``build_model`` returned, or Clipper's noop container image, served as
            ``build_model`` builds it (on Docker also any image of the engine's).
        labels : list of str, optional
            Free-form labels stored with the model.
        num_replicas : int
            Replicas to start.
        batch_size : int
            The largest batch sent to a replica; -1 lets adaptive batching choose.
        num_gpus : int
            Ours, not in 0.4.1: GPUs given to each replica (CUDA_VISIBLE_DEVICES locally,
            device requests on Docker); more than the machine has is refused.

        Returns once every replica is connected to the query frontend, so the next query is
        answered by the model.

        Raises
        ------
        ClipperException
            The version exists already, a name is invalid, the image cannot be had (Docker),
            or the replicas did not connect (the message says why, e.g. the end of a crashing
            replica's log).
        """
        self._require_connection()
        version = str(version)
        _check_name("name", name)
        _check_name("version", version)
        num_replicas = replica_count(num_replicas)
        num_gpus = whole_number("num_gpus", num_gpus, least=0)
        if self.get_model_info(name, version) is not None:
            raise ClipperException(f"model with name '{name}' and version '{version}' already exists")
        previous = self._current_version(name)
        # (A ContainerManager written for 0.4.1's interface has no runs_images: it runs images.)
        if clipper_images.is_noop_image(image) and not getattr(self.cm, "runs_images", True):
            image = self.build_model(name, version, None, image)
        self.cm.deploy_model(name=name, version=version, input_type=input_type, image=image,
                             num_replicas=num_replicas, **_gpus_if_asked(num_gpus, 0))
        try:
            self.register_model(name, version, input_type, image=image, labels=labels,
                                batch_size=batch_size)
        except BaseException:        # refused, or Ctrl-C: no replica of an unregistered version stays
            self._stop_unregistered(name, version)
            raise
        try:
            self._wait_for_replicas(name, version, num_replicas)
        except ClipperException as error:
            # The version is registered and current (as in 0.4.1): say so, and how to undo it.
            undo = (f"go back with set_model_version('{name}', '{previous}'), then remove it"
                    if previous is not None else "remove it")
            raise ClipperException(
                f"{error.msg}\nModel {name}:{version} stays registered as the current version, so "
                f"its applications get their default output: {undo} with "
                f"stop_versioned_models({{'{name}': ['{version}']}}).") from None
        self.logger.info("Done deploying model {name}:{version}.".format(name=name, version=version))

    def _stop_unregistered(self, name, version):
        """After a refused registration (a bad input type, batch size or label), no replica of
        the version may stay behind; but if it is registered after all (a concurrent deploy of
        it won, or our answer was lost), its replicas are that version's."""
        try:
            if self.get_model_info(name, version) is None:
                self.cm.stop_models({name: [version]})
        except ClipperException as error:        # the refusal is the news, not this
            self.logger.warning("Could not stop the replicas of %s:%s: %s", name, version, error)

    def register_model(self, name, version, input_type, image=None, labels=None, batch_size=-1):
        """Register a model version (and make it current) without starting any replica.

        Parameters are those of ``deploy_model``; ``image`` None registers a containerless
        model, whose replicas you run yourself.

        Raises ClipperException when the version exists or a parameter is invalid.
        """
        version = str(version)
        self._admin("add_model", {
            "model_name": name, "model_version": version, "labels": labels or DEFAULT_LABEL,
            "input_type": input_type, "container_name": image or CONTAINERLESS_MODEL_IMAGE,
            "model_data_path": "DEPRECATED", "batch_size": batch_size})
        self.logger.info("Successfully registered model {name}:{version}".format(name=name, version=version))

    def get_current_model_version(self, name):
        """The version of model ``name`` that queries go to.

        Raises ClipperException if no version of the model is registered.
        """
        version = self._current_version(name)
        if version is None:
            raise ClipperException("No versions of model {} registered with Clipper".format(name))
        return version

    def _current_version(self, name):
        """The current version of model ``name``, or None."""
        for model in self.get_all_models(verbose=True):
            if model["model_name"] == name and model["is_current_version"]:
                return model["model_version"]
        return None

    def get_num_replicas(self, name, version=None):
        """How many replicas of a model version run (``version`` None: the current one)."""
        self._require_connection()
        version = self.get_current_model_version(name) if version is None else str(version)
        return self.cm.get_num_replicas(name, version)

    def set_num_replicas(self, name, num_replicas, version=None, num_gpus=None):
        """Start or stop replicas of a model version (``version`` None: the current one) until
        ``num_replicas`` run; returns once exactly that many are connected. ``num_gpus`` (ours):
        GPUs for each replica started from now on; None keeps the version's.

        Raises ClipperException for an unknown or containerless version, or when the replicas
        do not connect.
        """
        self._require_connection()
        num_replicas = replica_count(num_replicas)
        if num_gpus is not None:
            num_gpus = whole_number("num_gpus", num_gpus, least=0)
        version = self.get_current_model_version(name) if version is None else str(version)
        info = self.get_model_info(name, version)
        if info is None:
            raise ClipperException(f"Cannot add container for non-registered model {name}:{version}")
        if info["container_name"] == CONTAINERLESS_MODEL_IMAGE:
            raise ClipperException(f"Cannot resize the replica set for containerless model {name}:{version}")
        if num_replicas:                  # registered through the REST API, it may be another
            _check_name("name", name)
            _check_name("version", version)
        self.cm.set_num_replicas(name, version, info["input_type"], info["container_name"], num_replicas,
                                 **_gpus_if_asked(num_gpus, None))
        self._wait_for_replicas(name, version, num_replicas)

    def get_all_models(self, verbose=False):
        """The registered model versions.

        Returns
        -------
        list
            ``"name:version"`` strings, or with ``verbose=True`` a dict per version
            (model_name, model_version, input_type, labels, container_name,
            model_data_path, is_current_version).
        """
        return self._admin("get_all_models", {"verbose": verbose}).json()

    def get_model_info(self, name, version):
        """One model version's dict (as ``get_all_models(verbose=True)``), or None."""
        info = self._admin("get_model", {"model_name": name, "model_version": str(version)}).json()
        return info or None

    def get_all_model_replicas(self, verbose=False):
        """The replicas connected to the query frontend.

        Returns
        -------
        list
            ``"name:version:replica_id"`` strings, or with ``verbose=True`` a dict per replica
            (model_id, model_name, model_version, model_replica_id, input_type).
        """
        return self._admin("get_all_containers", {"verbose": verbose}).json()

    def get_model_replica_info(self, name, version, replica_id):
        """One connected replica's dict (as ``get_all_model_replicas(verbose=True)``), or None."""
        info = self._admin("get_container", {"model_name": name, "model_version": str(version),
                                             "replica_id": replica_id}).json()
        return info or None

    def set_model_version(self, name, version, num_replicas=None):
        """Make a registered version current: queries follow at once (use it to roll back).

        With ``num_replicas``, also resize that version (``set_num_replicas``).

        Raises ClipperException for an unknown model or version.
        """
        version = str(version)
        self._admin("set_model_version", {"model_name": name, "model_version": version})
        if num_replicas is not None:
            self.set_num_replicas(name, num_replicas, version)

    # ---- stopping models ----
    def _versions_by_model(self, keep):
        versions = {}
        for model in self.get_all_models(verbose=True):
            if keep(model):
                versions.setdefault(model["model_name"], []).append(model["model_version"])
        return versions

    def _stop_and_delete(self, model_versions):
        self.cm.stop_models(model_versions)
        self._delete_versions(model_versions)
        self.logger.info("Stopped all containers for these models and versions:\n{}".format(model_versions))

    def _delete_versions(self, model_versions):
        """Unregister stopped versions; return once no replica of them is listed (the query
        frontend notices a closed connection a moment after the process ends)."""
        for name, versions in model_versions.items():
            for version in versions:
                self._admin("delete_versioned_model", {"model_name": name, "model_version": version})
        for name, versions in model_versions.items():
            for version in versions:
                self._wait_for_replicas(name, version, 0)

    def stop_models(self, model_names):
        """Stop every version of the named models (a name or a list) and unregister them."""
        self._require_connection()
        names = [model_names] if isinstance(model_names, str) else list(model_names)
        self._stop_and_delete(self._versions_by_model(lambda m: m["model_name"] in names))

    def stop_versioned_models(self, model_versions_dict):
        """Stop and unregister the given versions: ``{"model": ["1", "2"], ...}``."""
        self._require_connection()
        self._stop_and_delete({name: [str(v) for v in versions]
                               for name, versions in model_versions_dict.items()})

    def stop_inactive_model_versions(self, model_names):
        """Stop and unregister every version of the named models except the current one."""
        self._require_connection()
        names = [model_names] if isinstance(model_names, str) else list(model_names)
        self._stop_and_delete(self._versions_by_model(
            lambda m: m["model_name"] in names and not m["is_current_version"]))

    def stop_all_model_containers(self):
        """Stop the replicas of every model and unregister every version."""
        self._require_connection()
        model_versions = self._versions_by_model(lambda m: True)
        self.cm.stop_all_model_containers()
        self._delete_versions(model_versions)
        self.logger.info("Stopped all Clipper model containers")

    # ---- local check of a predict function ----
    def test_predict_function(self, query, func, input_type):
        """Run ``func`` on ``query`` as a deployed replica would: in a new process that loads
        the function as a replica does (a cloudpickle round trip), given the batch shaped as
        Clipper's container shapes it. As 0.4.1 did, it connects to this manager's cluster
        first if one is running (a function can be tested without a cluster, too).

        Parameters
        ----------
        query : dict
            A predict body: ``{"input": [...]}`` or ``{"input_batch": [[...], ...]}``.
        func : callable
            The predict function (a batch in, a list of outputs out).
        input_type : str
            "ints", "floats", "doubles", "bytes" or "strings".

        Returns
        -------
        list
            The function's outputs.
        """
        from clipper_admin.deployers.deployer_utils import run_locally
        if not self.connected:
            try:
                self.connect()
            except Exception as error:      # noqa: BLE001 - whatever this manager's connect raises
                self.logger.info("no cluster to connect to (%s): testing the function alone", error)
        return run_locally(query, func, input_type)
