"""ClipperConnection: clipper_admin 0.4.1's public API, for Python 3.9+.

Every method keeps 0.4.1's name, signature, REST call and return shape. Differences, all
on the side of doing what the caller meant: deploys and replica changes return only once
the replicas are connected (so the first query is not a default output), and a deploy of
a version that is already registered fails before any container is started.
"""
import logging
import time
import warnings

import requests

from clipper_admin.container_manager import CONTAINERLESS_MODEL_IMAGE, is_valid_name
from clipper_admin.exceptions import ClipperException, UnconnectedException

logging.basicConfig(format="%(asctime)s %(levelname)-8s [%(filename)s:%(lineno)d] %(message)s",
                    datefmt="%y-%m-%d:%H:%M:%S", level=logging.INFO)
logger = logging.getLogger(__name__)

DEFAULT_LABEL = []
DEFAULT_PREDICTION_CACHE_SIZE_BYTES = 33554432
START_TIMEOUT_SECONDS = 120
REPLICA_TIMEOUT_SECONDS = 120
REQUEST_TIMEOUT_SECONDS = 30


def _check_name(kind, value):
    if not is_valid_name(value):
        raise ClipperException(
            f"Invalid value: {value}: a model {kind} must be a valid DNS-1123 label. It must "
            "consist of lower case alphanumeric characters or '-', and must start and end with "
            "an alphanumeric character (regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?\\Z')")


def _check_gpus(num_gpus):
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
        raise ClipperException(f"num_gpus must be a whole number of GPUs per replica (0 or more), "
                               f"not {num_gpus!r}")


class ClipperConnection(object):
    def __init__(self, container_manager):
        self.connected = False
        self.cm = container_manager
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
            raise ClipperException(f"Could not reach Clipper at {url} ({error}). Is the cluster "
                                   "running? Start it with start_clipper().") from None
        if response.status_code != requests.codes.ok:
            raise ClipperException("Received error status code: {code} and message: {msg}".format(
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
        """Until exactly ``num_replicas`` replicas of the version are connected."""
        deadline = time.monotonic() + REPLICA_TIMEOUT_SECONDS
        while True:
            connected = [r for r in self.get_all_model_replicas(verbose=True)
                         if r["model_name"] == name and r["model_version"] == str(version)]
            if len(connected) == num_replicas:
                return
            failure = self.cm.replica_failure(name, version)
            if failure or time.monotonic() > deadline:
                raise ClipperException(
                    f"{len(connected)} of {num_replicas} replicas of model {name}:{version} "
                    f"connected. {failure or f'Timed out after {REPLICA_TIMEOUT_SECONDS} s.'}")
            time.sleep(0.05)

    # ---- cluster ----
    def start_clipper(self, query_frontend_image="clipper/query_frontend:0.4.1",
                      mgmt_frontend_image="clipper/management_frontend:0.4.1",
                      frontend_exporter_image="clipper/frontend-exporter:0.4.1",
                      cache_size=DEFAULT_PREDICTION_CACHE_SIZE_BYTES, qf_http_thread_pool_size=1,
                      qf_http_timeout_request=5, qf_http_timeout_content=300,
                      num_frontend_replicas=1):
        self.cm.start_clipper(query_frontend_image, mgmt_frontend_image, frontend_exporter_image,
                              cache_size, qf_http_thread_pool_size, qf_http_timeout_request,
                              qf_http_timeout_content, num_frontend_replicas)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for url in (f"http://{self.cm.get_query_addr()}/metrics",
                    f"http://{self.cm.get_admin_addr()}/admin/ping"):
            while True:
                try:
                    if self._http.get(url, timeout=5).status_code == requests.codes.ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise ClipperException(f"Clipper did not answer at {url} within "
                                           f"{START_TIMEOUT_SECONDS} s")
                time.sleep(0.1)
        logger.info("Clipper is running")
        self.connected = True

    def connect(self):
        self.cm.connect()
        self.connected = True
        logger.info("Successfully connected to Clipper cluster at {}".format(self.cm.get_query_addr()))

    def stop_all(self, graceful=True):
        self.cm.stop_all(graceful=graceful)
        self.connected = False
        logger.info("Stopped all Clipper cluster and all model containers")

    def get_query_addr(self):
        self._require_connection()
        return self.cm.get_query_addr()

    def get_metric_addr(self):
        self._require_connection()
        return self.cm.get_metric_addr()

    def get_clipper_logs(self, logging_dir="clipper_logs/"):
        return self.cm.get_logs(logging_dir)

    def inspect_instance(self):
        self._require_connection()
        return self._request("GET", f"http://{self.cm.get_query_addr()}/metrics").json()

    # ---- applications ----
    def register_application(self, name, input_type, default_output, slo_micros):
        self._admin("add_app", {"name": name, "input_type": input_type,
                                "default_output": default_output,
                                "latency_slo_micros": slo_micros})
        logger.info("Application {app} was successfully registered".format(app=name))

    def unregister_application(self, name):
        self._admin("delete_app", {"name": name})
        logger.info("Application {app} was successfully unregistered".format(app=name))

    def delete_application(self, name):
        warnings.warn("delete_application has been deprecated, please use unregister_application",
                      DeprecationWarning)
        self.unregister_application(name)

    def link_model_to_app(self, app_name, model_name):
        self._admin("add_model_links", {"app_name": app_name, "model_names": [model_name]})
        logger.info("Model {model} is now linked to application {app}".format(model=model_name, app=app_name))

    def unlink_model_from_app(self, app_name, model_name):
        self._admin("delete_model_links", {"app_name": app_name, "model_names": [model_name]})
        logger.info("Model {model} is now removed to application {app}".format(model=model_name, app=app_name))

    def get_all_apps(self, verbose=False):
        return self._admin("get_all_applications", {"verbose": verbose}).json()

    def get_app_info(self, name):
        info = self._admin("get_application", {"name": name}).json()
        return info or None

    def get_linked_models(self, app_name):
        return self._admin("get_linked_models", {"app_name": app_name}).json()

    # ---- models ----
    def build_and_deploy_model(self, name, version, input_type, model_data_path, base_image,
                               labels=None, container_registry=None, num_replicas=1,
                               batch_size=-1, pkgs_to_install=None, num_gpus=0):
        self._require_connection()
        image = self.build_model(name, version, model_data_path, base_image, container_registry,
                                 pkgs_to_install)
        self.deploy_model(name, version, input_type, image, labels, num_replicas, batch_size,
                          num_gpus)

    def build_model(self, name, version, model_data_path, base_image, container_registry=None,
                    pkgs_to_install=None):
        version = str(version)
        _check_name("name", name)
        _check_name("version", version)
        return self.cm.build_model(name, version, model_data_path, base_image,
                                   container_registry, pkgs_to_install)

    def deploy_model(self, name, version, input_type, image, labels=None, num_replicas=1,
                     batch_size=-1, num_gpus=0):
        """``num_gpus`` (ours, not in 0.4.1): GPUs given to each replica; the backend refuses
        more than the machine has."""
        self._require_connection()
        version = str(version)
        _check_name("name", name)
        _check_name("version", version)
        _check_gpus(num_gpus)
        if self.get_model_info(name, version) is not None:
            raise ClipperException(f"model with name '{name}' and version '{version}' already exists")
        self.cm.deploy_model(name=name, version=version, input_type=input_type, image=image,
                             num_replicas=num_replicas, num_gpus=num_gpus)
        self.register_model(name, version, input_type, image=image, labels=labels,
                            batch_size=batch_size)
        self._wait_for_replicas(name, version, num_replicas)
        logger.info("Done deploying model {name}:{version}.".format(name=name, version=version))

    def register_model(self, name, version, input_type, image=None, labels=None, batch_size=-1):
        version = str(version)
        self._admin("add_model", {
            "model_name": name, "model_version": version, "labels": labels or DEFAULT_LABEL,
            "input_type": input_type, "container_name": image or CONTAINERLESS_MODEL_IMAGE,
            "model_data_path": "DEPRECATED", "batch_size": batch_size})
        logger.info("Successfully registered model {name}:{version}".format(name=name, version=version))

    def get_current_model_version(self, name):
        for model in self.get_all_models(verbose=True):
            if model["model_name"] == name and model["is_current_version"]:
                return model["model_version"]
        raise ClipperException("No versions of model {} registered with Clipper".format(name))

    def get_num_replicas(self, name, version=None):
        self._require_connection()
        version = self.get_current_model_version(name) if version is None else str(version)
        return self.cm.get_num_replicas(name, version)

    def set_num_replicas(self, name, num_replicas, version=None, num_gpus=None):
        """``num_gpus`` (ours): GPUs per replica from now on; None keeps the version's."""
        self._require_connection()
        if num_gpus is not None:
            _check_gpus(num_gpus)
        version = self.get_current_model_version(name) if version is None else str(version)
        info = self.get_model_info(name, version)
        if info is None:
            raise ClipperException(f"Cannot add container for non-registered model {name}:{version}")
        if info["container_name"] == CONTAINERLESS_MODEL_IMAGE:
            raise ClipperException(f"Cannot resize the replica set for containerless model {name}:{version}")
        self.cm.set_num_replicas(name, version, info["input_type"], info["container_name"], num_replicas,
                                 num_gpus=num_gpus)
        self._wait_for_replicas(name, version, num_replicas)

    def get_all_models(self, verbose=False):
        return self._admin("get_all_models", {"verbose": verbose}).json()

    def get_model_info(self, name, version):
        info = self._admin("get_model", {"model_name": name, "model_version": str(version)}).json()
        return info or None

    def get_all_model_replicas(self, verbose=False):
        return self._admin("get_all_containers", {"verbose": verbose}).json()

    def get_model_replica_info(self, name, version, replica_id):
        info = self._admin("get_container", {"model_name": name, "model_version": str(version),
                                             "replica_id": replica_id}).json()
        return info or None

    def set_model_version(self, name, version, num_replicas=None):
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
        logger.info("Stopped all containers for these models and versions:\n{}".format(model_versions))

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
        self._require_connection()
        names = [model_names] if isinstance(model_names, str) else list(model_names)
        self._stop_and_delete(self._versions_by_model(lambda m: m["model_name"] in names))

    def stop_versioned_models(self, model_versions_dict):
        self._require_connection()
        self._stop_and_delete({name: [str(v) for v in versions]
                               for name, versions in model_versions_dict.items()})

    def stop_inactive_model_versions(self, model_names):
        self._require_connection()
        names = [model_names] if isinstance(model_names, str) else list(model_names)
        self._stop_and_delete(self._versions_by_model(
            lambda m: m["model_name"] in names and not m["is_current_version"]))

    def stop_all_model_containers(self):
        self._require_connection()
        model_versions = self._versions_by_model(lambda m: True)
        self.cm.stop_all_model_containers()
        self._delete_versions(model_versions)
        logger.info("Stopped all Clipper model containers")

    # ---- local check of a predict function ----
    def test_predict_function(self, query, func, input_type):
        """Run ``func`` on ``query`` as a deployed container would, after a pickle round trip."""
        from clipper_admin.deployers.deployer_utils import run_locally
        return run_locally(query, func, input_type)
