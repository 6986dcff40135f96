"""The Docker backend on a real engine: containers, labels, scaling, restarts, teardown."""
import contextlib
import io
import os
import signal
import tarfile

import docker.errors
import pytest
import requests

import clipper_admin.metrics as metrics

from clipper_admin import ClipperConnection, ClipperException, DockerContainerManager
from clipper_admin.container_manager import CLIPPER_DOCKER_LABEL, CLIPPER_MODEL_CONTAINER_LABEL
from clipper_admin.deployers import python as python_deployer
from clipper_admin.docker.docker_container_manager import QUERY_FRONTEND, ROLE_LABEL
from clipper_admin.docker.images import pip_ca_bundle
from helpers import port_open, prediction, total, wait_for
from scripts import run_script

# The first test may build the base image (debootstrap) and the runtime image: minutes.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
PORTS = dict(clipper_query_port=31337, clipper_management_port=31338, clipper_rpc_port=19000,
             clipper_metric_port=31390, redis_port=18379)
TOKEN = "dock-admin-token"


@pytest.fixture(scope="module")
def cluster(docker_client, base_image):
    extra = {"labels": {"team": "tests"}, "environment": ["TZ=UTC"], "mem_limit": "1g"}
    conn = ClipperConnection(DockerContainerManager(cluster_name="dock", base_image=base_image, admin_token=TOKEN,
                                                    extra_container_kwargs=extra, **PORTS))
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(conn, "dock-sum", "doubles", total, slo_micros=2_000_000)
        yield conn
    finally:
        conn.stop_all(graceful=False)
        docker_client.images.remove("dock-dock-sum:1", force=True)


def containers(client, **labels):
    wanted = {CLIPPER_DOCKER_LABEL: "dock", **labels}
    return client.containers.list(filters={"label": [f"{k}={v}" for k, v in wanted.items()]})


def test_every_role_is_a_labelled_container_on_loopback(cluster, docker_client):
    roles = sorted(c.labels["ai.clipper.role"] for c in containers(docker_client))
    assert roles == ["management-frontend", "model-container", "query-frontend", "redis"]
    for container in containers(docker_client):
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.labels["ai.clipper.query_frontend.query.port"] == "31337"
        # extra_container_kwargs reach every container, merged with Clipper's own
        assert container.labels["team"] == "tests" and "TZ=UTC" in container.attrs["Config"]["Env"]
        assert container.attrs["HostConfig"]["Memory"] == 1 << 30
        assert container.attrs["HostConfig"]["LogConfig"]["Config"] == {"max-size": str(64 << 20), "max-file": "2"}
        assert TOKEN not in " ".join(container.attrs["Args"])
    # With a token, the RPC port takes only the cluster's containers (CURVE keys, through
    # the environment): the replica got its keys, and they are on no command line.
    replica, = containers(docker_client, **{"ai.clipper.role": "model-container"})
    secret = dict(item.split("=", 1) for item in replica.attrs["Config"]["Env"])["CLIPPER_RPC_CLIENT_SECRET_KEY"]
    assert secret and all(secret not in " ".join(c.attrs["Args"]) for c in containers(docker_client))
    without_token = requests.post(f"http://{cluster.cm.get_admin_addr()}/admin/get_all_applications", json={})
    assert without_token.status_code == 401
    # With an admin token the RPC port needs the containers' CURVE key: the replica has it,
    # and not the frontend's secret.
    replica, = containers(docker_client, **{"ai.clipper.role": "model-container"})
    replica_environment = " ".join(replica.attrs["Config"]["Env"])
    assert "CLIPPER_RPC_CLIENT_SECRET_KEY=" in replica_environment
    assert "CLIPPER_RPC_SERVER_SECRET_KEY" not in replica_environment
    first = prediction(cluster, "dock-sum", {"input": [0.0]})
    assert prediction(cluster, "dock-sum", {"input": [1.0, 2.5]}) == {
        "query_id": first["query_id"] + 1, "output": 3.5, "default": False}


def test_replicas_scale_as_containers(cluster, docker_client):
    cluster.set_num_replicas("dock-sum", 2)
    replicas = containers(docker_client, **{CLIPPER_MODEL_CONTAINER_LABEL: "dock-sum_1"})
    assert len(replicas) == 2 and cluster.get_num_replicas("dock-sum") == 2
    assert len(cluster.get_all_model_replicas()) == 2
    cluster.set_num_replicas("dock-sum", 1)
    assert len(containers(docker_client, **{CLIPPER_MODEL_CONTAINER_LABEL: "dock-sum_1"})) == 1
    wait_for(lambda: len(cluster.get_all_model_replicas()) == 1, 30, "the surplus replica leaving", interval=0.2)


def counted_total(xs):
    metrics.add_metric("custom_inputs", "Counter", "inputs this replica summed")
    metrics.report_metric("custom_inputs", len(xs))
    return [str(sum(x)) for x in xs]


def test_replicas_report_clippers_container_metrics_as_clippers_metric_test_reads_them(cluster, docker_client):
    """integration-tests/clipper_metric_docker.py: two replicas, each up as a target and
    with its own series of every clipper_mc_* metric, and the model's own counter."""
    python_deployer.create_endpoint(cluster, "dock-counted", "doubles", counted_total, num_replicas=2)
    try:
        for value in range(4):
            assert prediction(cluster, "dock-counted", {"input": [float(value), 1.0]})["output"] == value + 1.0
        metric_addr = f"http://{cluster.cm.get_metric_addr()}"

        def series(name):
            answer = requests.get(f"{metric_addr}/api/v1/series?match[]={name}", timeout=10).json()
            assert answer["status"] == "success"
            return [s for s in answer["data"] if s["model_name"] == "dock-counted"]
        for name in ("clipper_mc_pred_total", "clipper_mc_end_to_end_latency_ms_sum", "clipper_mc_recv_time_ms_sum",
                     "clipper_mc_parse_time_ms_sum", "clipper_mc_handle_time_ms_sum"):
            assert len(series(name)) == 2, name
        replica_names = {c.name for c in containers(docker_client, **{CLIPPER_MODEL_CONTAINER_LABEL: "dock-counted_1"})}
        assert {s["replica"] for s in series("clipper_mc_pred_total")} == replica_names
        wait_for(lambda: len(series("custom_inputs_total")) >= 1, 10, "the model's own counter", interval=0.2)
        targets = requests.get(f"{metric_addr}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert all(t["health"] == "up" for t in targets)
        assert sorted(t["labels"]["job"] for t in targets if t["labels"].get("model_name") != "dock-sum") == [
            "model-container", "model-container", "query"]
    finally:
        cluster.stop_models(["dock-counted"])
        cluster.unregister_application("dock-counted")
        docker_client.images.remove("dock-dock-counted:1", force=True)


def test_a_crashed_replica_is_restarted_by_docker(cluster, docker_client):
    replica, = containers(docker_client, **{CLIPPER_MODEL_CONTAINER_LABEL: "dock-sum_1"})
    os.kill(replica.attrs["State"]["Pid"], signal.SIGKILL)
    wait_for(lambda: (replica.reload() or replica.attrs["RestartCount"]) >= 1, 30, "a restart", interval=0.2)
    wait_for(lambda: prediction(cluster, "dock-sum", {"input": [2.0]})["default"] is False, 30, "serving again", interval=0.2)


def test_a_stopped_replica_is_not_counted_and_scaling_replaces_it(cluster, docker_client):
    """docker kill (or docker stop) leaves a container stopped for good: it counted as a
    replica, so set_num_replicas started none and waited 120 s."""
    replica, = containers(docker_client, **{CLIPPER_MODEL_CONTAINER_LABEL: "dock-sum_1"})
    replica.kill()
    wait_for(lambda: (replica.reload() or replica.status) == "exited", 30, "the replica stopped", interval=0.2)
    assert cluster.get_num_replicas("dock-sum") == 0
    cluster.set_num_replicas("dock-sum", 1)
    assert cluster.get_num_replicas("dock-sum") == 1
    assert prediction(cluster, "dock-sum", {"input": [3.0]})["default"] is False
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(replica.id)           # removed, not left behind


def test_an_interrupted_deploy_leaves_no_replica_and_a_half_deployed_version_is_refused(cluster, docker_client):
    """Ctrl-C while a deploy started its replicas left those started running, for a version
    never registered: stop_models did not see them, and deploying that version again counted
    them as its own, so they served the interrupted deploy's model beside the new one."""
    def every(version):
        return docker_client.containers.list(all=True, filters={"label": [
            f"{CLIPPER_DOCKER_LABEL}=dock", f"{CLIPPER_MODEL_CONTAINER_LABEL}=dock-cut_{version}"]})
    real_run, runs = cluster.cm._run, []

    def interrupted_second_run(*args, **kwargs):
        if runs:
            raise KeyboardInterrupt
        runs.append(real_run(*args, **kwargs))
        return runs[-1]
    cluster.cm._run = interrupted_second_run
    try:
        with pytest.raises(KeyboardInterrupt):
            python_deployer.deploy_python_closure(cluster, "dock-cut", 1, "doubles", total, num_replicas=2)
    finally:
        del cluster.cm._run
    try:
        assert len(runs) == 1 and every(1) == []
        assert cluster.get_model_info("dock-cut", 1) is None
        # A version whose replicas run without it being registered is refused, not joined.
        cluster.cm.set_num_replicas("dock-cut", "2", "doubles", "dock-dock-cut:1", 1)
        with pytest.raises(ClipperException, match="Replicas of model dock-cut:2 already run"):
            python_deployer.deploy_python_closure(cluster, "dock-cut", 2, "doubles", total, num_replicas=2)
        assert len(every(2)) == 1 and cluster.get_model_info("dock-cut", 2) is None
    finally:
        cluster.cm.stop_models({"dock-cut": ["1", "2"]})
        for version in (1, 2):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(f"dock-dock-cut:{version}", force=True)


def test_a_paused_replica_is_still_one(cluster, docker_client):
    replica, = containers(docker_client, **{CLIPPER_MODEL_CONTAINER_LABEL: "dock-sum_1"})
    replica.pause()
    try:
        assert cluster.get_num_replicas("dock-sum") == 1
        with pytest.raises(ClipperException, match="already running"):
            ClipperConnection(DockerContainerManager(cluster_name="dock", **PORTS)).start_clipper()
    finally:
        replica.unpause()


def test_a_model_image_of_another_cluster_is_not_replaced(cluster, docker_client, tmp_path):
    """Cluster "dock" with model "x-m" and cluster "dock-x" with model "m" name the same image."""
    other = ClipperConnection(DockerContainerManager(cluster_name="dock-x", base_image=cluster.cm.base_image))
    theirs = other.build_model("m", 1, str(tmp_path), None)
    try:
        with pytest.raises(ClipperException, match="holds a model of the Clipper cluster 'dock-x'"):
            cluster.build_model("x-m", 1, str(tmp_path), None)
        assert docker_client.images.get(theirs).labels[CLIPPER_DOCKER_LABEL] == "dock-x"
    finally:
        docker_client.images.remove(theirs)


def test_another_process_connects_by_labels_and_gets_the_admin_token(cluster, tmp_path):
    again = ClipperConnection(DockerContainerManager(cluster_name="dock"))
    again.connect()
    assert again.get_query_addr() == "localhost:31337"
    assert again.get_app_info("dock-sum")["linked_models"] == ["dock-sum"]
    logs = again.get_clipper_logs(logging_dir=str(tmp_path))
    assert len(logs) == 4 and any("query-frontend" in path for path in logs)
    assert any("listening on http://127.0.0.1:31337" in open(path).read() for path in logs)


def file_in_image(docker_client, image, path):
    """A file's content, read from a container made (not run) of the image: the output of a
    container that exits at once can be read back empty from Docker's logs."""
    container = docker_client.containers.create(image)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            return archive.extractfile(os.path.basename(path)).read()
    finally:
        container.remove()


def test_a_model_image_is_the_model_directory_and_a_rebuild_leaves_no_untagged_image(
        cluster, docker_client, tmp_path):
    (tmp_path / "weights.txt").write_text("first")
    first = docker_client.images.get(cluster.build_model("dock-rebuild", 1, str(tmp_path), None))
    (tmp_path / "weights.txt").write_text("second")
    image = cluster.build_model("dock-rebuild", 1, str(tmp_path), None)
    try:
        assert image == "dock-dock-rebuild:1"      # <cluster>-name:version, as 0.4.1
        assert file_in_image(docker_client, image, "/model/weights.txt") == b"second"
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(first.id)
    finally:
        docker_client.images.remove(image)


def test_pkgs_to_install_trust_what_the_clients_pip_trusts(cluster, docker_client, tmp_path):
    """Behind a TLS-inspecting proxy (as here) pip in the image needs the client's CA bundle."""
    if pip_ca_bundle() is None:
        pytest.skip("pip here trusts no extra CA bundle (no PIP_CERT, no cert in pip's config)")
    image = cluster.build_model("dock-pkgs", 1, str(tmp_path), None, pkgs_to_install=["six>=1.16"])
    try:
        shown = docker_client.containers.run(image, ["-c", "import six; print(six.__version__)"],
                                             entrypoint=["python"], remove=True)
        assert shown.strip().startswith(b"1.")
    finally:
        docker_client.images.remove(image)


def test_stop_all_from_another_process_leaves_nothing(cluster, docker_client):
    """The last test on the shared cluster: it stops it."""
    again = ClipperConnection(DockerContainerManager(cluster_name="dock"))
    again.connect()
    again.stop_all()
    assert not docker_client.containers.list(all=True, filters={"label": f"{CLIPPER_DOCKER_LABEL}=dock"})
    assert not [port for port in PORTS.values() if port_open(port)]


def test_without_an_engine_the_scripts_say_so_in_one_line(clipper_state_dir):
    result = run_script("basicQuerySimplified.py", "--backend", "docker",
                        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: The Docker engine is not reachable")


def test_a_stopped_cluster_is_not_connected_to_and_a_new_start_begins_empty(docker_client, base_image):
    """Its containers stopped (docker stop), not removed: connect() said yes and every call
    then failed; start_clipper() said "already running"; and a start over a leftover volume
    brought the old cluster's applications back. With only its query frontend stopped, the
    two said opposite things (stopped; already running)."""
    ports = dict(clipper_query_port=31437, clipper_management_port=31438, clipper_rpc_port=19100,
                 clipper_metric_port=31490)
    conn = ClipperConnection(DockerContainerManager(cluster_name="dock-left", base_image=base_image, **ports))
    conn.start_clipper()
    try:
        conn.register_application("old-app", "doubles", "0", 100000)
        cluster_containers = docker_client.containers.list(filters={"label": f"{CLIPPER_DOCKER_LABEL}=dock-left"})
        frontend, = [c for c in cluster_containers if c.labels.get(ROLE_LABEL) == QUERY_FRONTEND]
        frontend.stop(timeout=0)
        stopped = f"'dock-left' on the Docker engine is stopped \\({frontend.name}: stopped"
        with pytest.raises(ClipperException, match=stopped):
            ClipperConnection(DockerContainerManager(cluster_name="dock-left", **ports)).connect()
        with pytest.raises(ClipperException, match=stopped):
            ClipperConnection(DockerContainerManager(cluster_name="dock-left", base_image=base_image,
                                                     **ports)).start_clipper()
        for container in cluster_containers:
            container.stop(timeout=0)
        with pytest.raises(ClipperException, match="'dock-left' on the Docker engine is stopped"):
            ClipperConnection(DockerContainerManager(cluster_name="dock-left", **ports)).connect()
        again = ClipperConnection(DockerContainerManager(cluster_name="dock-left", base_image=base_image, **ports))
        again.start_clipper()
        assert again.get_all_apps() == []
    finally:
        conn.stop_all(graceful=False)
    assert not docker_client.volumes.list(filters={"label": f"{CLIPPER_DOCKER_LABEL}=dock-left"})


def test_a_cluster_of_an_older_clipper_is_stopped_whatever_its_label(docker_client, base_image):
    """Clipper before 0.4 labelled its containers with an empty cluster name; closeClipper.py
    stops them too (a name check made it stop nothing at all)."""
    from clipper_admin.docker.docker_container_manager import stop_all_docker_clusters
    old = docker_client.containers.run(base_image, ["sleep", "60"], detach=True, network_mode="host",
                                       labels={CLIPPER_DOCKER_LABEL: ""})
    try:
        assert ("", 1) in stop_all_docker_clusters(graceful=False, names=[""])
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(old.id)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            old.remove(force=True)
