"""clipper_admin 0.4.1's module-level names that Clipper-era scripts import, and the ports a
cluster takes by default (no engine or cluster needed)."""
import logging

import pytest

import clipper_admin
from clipper_admin import ClipperConnection, ClipperException, DockerContainerManager, LocalContainerManager


def test_clipper_temp_dir_is_0_4_1s():
    from clipper_admin.clipper_admin import CLIPPER_TEMP_DIR
    assert clipper_admin.CLIPPER_TEMP_DIR == CLIPPER_TEMP_DIR == "/tmp/clipper"


def test_kubernetes_container_manager_imports_and_explains_what_to_use_instead():
    from clipper_admin.kubernetes.kubernetes_container_manager import KubernetesContainerManager
    assert clipper_admin.KubernetesContainerManager is KubernetesContainerManager
    with pytest.raises(ClipperException, match="No Kubernetes backend ships with this Clipper. To run a cluster "
                                               "across machines, use the Ray backend, clipper_admin.RayContainerManager"):
        KubernetesContainerManager(cluster_name="k8s", kubernetes_proxy_addr="127.0.0.1:8080", useInternalIP=True)


@pytest.mark.parametrize("manager", [LocalContainerManager, DockerContainerManager])
def test_every_port_a_cluster_takes_follows_its_own_parameters(manager):
    """Clusters given other query ports never share a metrics port (1390 for Clipper's 1337)."""
    assert manager().clipper_metric_port == 1390
    assert manager(clipper_query_port=2337).clipper_metric_port == 2390
    assert manager(clipper_query_port=2337, clipper_metric_port=9999).clipper_metric_port == 9999


def test_the_names_0_4_1s_star_import_exported():
    """0.4.1's __init__ did ``from .clipper_admin import *`` with no __all__, so its module
    constants were clipper_admin's own names."""
    from clipper_admin.clipper_admin import DEFAULT_LABEL, DEFAULT_PREDICTION_CACHE_SIZE_BYTES
    assert clipper_admin.DEFAULT_PREDICTION_CACHE_SIZE_BYTES == DEFAULT_PREDICTION_CACHE_SIZE_BYTES == 33554432
    assert clipper_admin.DEFAULT_LABEL == DEFAULT_LABEL == []
    assert clipper_admin.CONTAINERLESS_MODEL_IMAGE == "NO_CONTAINER"
    assert clipper_admin.ClusterAdapter is clipper_admin.container_manager.ClusterAdapter


def test_container_manager_module_has_what_0_4_1s_backends_imported():
    """A ContainerManager written for 0.4.1 imports these, as 0.4.1's own backends did."""
    import logging
    from clipper_admin.container_manager import (
        CLIPPER_DOCKER_PORT_LABELS, CLIPPER_FLUENTD_CONFIG_LABEL, CLIPPER_INTERNAL_FLUENTD_PORT,
        CLIPPER_METRIC_CONFIG_LABEL, CLIPPER_NAME_LABEL, ClusterAdapter, parse_model_container_label)
    from clipper_admin.docker.docker_container_manager import PORT_LABELS
    assert CLIPPER_DOCKER_PORT_LABELS == {
        "redis": "ai.clipper.redis.port", "query_rest": "ai.clipper.query_frontend.query.port",
        "query_rpc": "ai.clipper.query_frontend.rpc.port", "management": "ai.clipper.management.port",
        "metric": "ai.clipper.metric.port", "fluentd": "ai.clipper.fluentd.port"}
    assert set(PORT_LABELS.values()) <= set(CLIPPER_DOCKER_PORT_LABELS.values())
    assert (CLIPPER_NAME_LABEL, CLIPPER_METRIC_CONFIG_LABEL, CLIPPER_FLUENTD_CONFIG_LABEL,
            CLIPPER_INTERNAL_FLUENTD_PORT) == ("ai.clipper.name", "ai.clipper.metric.config",
                                               "ai.clipper.fluentd.config", 24224)
    adapter = ClusterAdapter(logging.getLogger("t"), {"cluster_name": "c1"})
    assert adapter.process("hello", {}) == ("[c1] hello", {})
    assert parse_model_container_label("m_1") == ["m", "1"]
    with pytest.raises(ClipperException, match="Unable to parse model container label a_b_c"):
        parse_model_container_label("a_b_c")


def test_unconnected_exception_keeps_its_message_attribute():
    error = clipper_admin.UnconnectedException()
    assert error.message == error.msg == str(error)
    assert error.message.startswith("No connection to Clipper cluster.")


def test_serialize_object_is_a_cloudpickle_round_trip():
    import pickle
    from clipper_admin.deployers.deployer_utils import serialize_object
    offset = 3
    data = serialize_object(lambda x: x + offset)
    assert isinstance(data, bytes) and pickle.loads(data)(1) == 4


def test_connection_logs_with_the_cluster_name(caplog):
    """0.4.1's ClipperConnection.logger prefixes messages with the cluster's name."""
    conn = ClipperConnection(LocalContainerManager(cluster_name="named-cluster"))
    with caplog.at_level(logging.INFO, logger="clipper_admin"):
        conn.logger.info("hello")
    assert "[named-cluster] hello" in caplog.text


def test_the_local_manager_takes_the_docker_managers_own_parameters(caplog):
    """Clipper's examples write DockerContainerManager(use_centralized_log=False), and its
    test helpers pass fluentd_port and prometheus_port: with LocalContainerManager's name in
    its place, they still construct; what means nothing locally is said in the log."""
    with caplog.at_level(logging.WARNING):
        LocalContainerManager(use_centralized_log=False)
        assert not caplog.records                       # 0.4.1's defaults: nothing to say
        LocalContainerManager(cluster_name="c", docker_ip_address="localhost", fluentd_port=24500,
                              prometheus_port=24501, docker_network="clipper_network", extra_container_kwargs={})
    assert "fluentd_port=24500, prometheus_port=24501, extra_container_kwargs={}" in caplog.text
    with pytest.raises(TypeError, match="unexpected keyword argument 'fluentd'"):
        LocalContainerManager(fluentd=1)
    # 0.4.1's attribute, which Clipper's logging README reads: no log collector here.
    assert LocalContainerManager().logging_system_instance is None


def test_the_docker_manager_says_no_log_collector_starts(caplog):
    from clipper_admin import DockerContainerManager
    with caplog.at_level(logging.WARNING):
        manager = DockerContainerManager(use_centralized_log=True)       # no engine needed yet
    assert manager.logging_system_instance is None
    assert "no log collector (fluentd) is started" in caplog.text


def test_pkgs_to_install_is_any_collection_of_requirements_but_not_one_string():
    from clipper_admin.container_manager import package_list
    assert package_list(None) is None
    assert package_list(("six", "tabulate>=0.9")) == ["six", "tabulate>=0.9"]
    assert package_list({"six"}) == ["six"]            # 0.4.1 took a set too
    # A line break would start an instruction of its own in the Docker backend's Dockerfile.
    for wrong in ("six", b"six", 5, ["six", 5], ["numpy\nRUN touch /pwned #"], ["six\r"]):
        with pytest.raises(ClipperException, match="pkgs_to_install must be a list of pip requirements"):
            package_list(wrong)


def test_serialize_object_ships_the_users_modules_it_reaches_and_not_the_others(tmp_path, monkeypatch):
    """A module of the user's that the function reaches (here through a module it uses) goes
    by value; a module of the user's it does not reach, which cannot be pickled, is left out
    (shipping every loaded module of the user's would fail on it)."""
    import subprocess
    import sys
    from clipper_admin.deployers.deployer_utils import serialize_object
    (tmp_path / "unit_helper.py").write_text("def scale(x):\n    return 10 * x\n")
    (tmp_path / "unit_models.py").write_text("import unit_helper\ndef predict(x):\n    return unit_helper.scale(x)\n")
    (tmp_path / "unit_locked.py").write_text("import threading\nLOCK = threading.RLock()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import unit_locked  # noqa: F401  (loaded, not used by the function)
    import unit_models
    try:
        data = serialize_object(unit_models.predict)
        loaded = subprocess.run([sys.executable, "-c", "import pickle, sys; "
                                 "print(pickle.loads(sys.stdin.buffer.read())(4))"],
                                input=data, capture_output=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
        assert loaded.stdout == b"40\n", loaded.stderr.decode()
        import cloudpickle
        assert "unit_helper" not in cloudpickle.list_registry_pickle_by_value()   # unregistered after
    finally:
        for name in ("unit_helper", "unit_models", "unit_locked"):
            sys.modules.pop(name, None)


def test_a_cluster_that_does_not_answer_is_a_named_clipper_exception():
    """An unreachable management API surfaces as a public, documented type (it was a private
    class, ``_Unavailable``, in users' tracebacks), still a ClipperException as in 0.4.1."""
    import socket
    from clipper_admin.exceptions import ClusterUnavailable

    class Addresses:                     # a container manager that only holds the addresses
        def __init__(self, port):
            self.admin_addr = f"127.0.0.1:{port}"

        def get_admin_addr(self):
            return self.admin_addr

    with socket.socket() as closed:      # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        conn = ClipperConnection(Addresses(port))
        conn.connected = True
        with pytest.raises(ClusterUnavailable, match="Could not reach Clipper .* start_clipper") as raised:
            conn.get_all_apps()
    assert isinstance(raised.value, ClipperException)
    assert type(raised.value).__module__ == "clipper_admin.exceptions"
