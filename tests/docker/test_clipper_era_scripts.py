"""What Clipper-era scripts do on the Docker backend: several clusters on one machine (and a
Redis of the user's own on 6379), a model image of the user's own, 0.4.1's attributes and
names, and the engine's exception type for a taken port."""
import contextlib
import io
import socket
import subprocess
import tarfile
from pathlib import Path

import docker
import docker.errors
import pytest
import redis
import requests

from clipper.cluster.redis_binary import find_redis_server
from clipper_admin import ClipperConnection, ClipperException, DockerContainerManager, LocalContainerManager
from clipper_admin.container_manager import CLIPPER_DOCKER_LABEL
from clipper_admin.deployers import python as python_deployer
from clipper_admin.docker.images import NOOP_RUNTIME_LABEL, ensure_noop_image, ensure_runtime_image, pip_ca_bundle
from helpers import ROOT, port_open

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
# Only the query, management and RPC ports are given, as a 0.4.1 script gives them; the
# metrics port and Redis must not need any more.
SIDE_A = dict(clipper_query_port=32337, clipper_management_port=32338, clipper_rpc_port=32700)
SIDE_B = dict(clipper_query_port=13337, clipper_management_port=13338, clipper_rpc_port=13700)
LOCAL = dict(clipper_query_port=14337, clipper_management_port=14338, clipper_rpc_port=14700)
EXTERNAL = dict(clipper_query_port=18337, clipper_management_port=18338, clipper_rpc_port=18700)
RPC_IMAGE = "clipper-test/rpc-container:1"
RPC_MODULE_IMAGE = "clipper-test/rpc-module-container:1"


@contextlib.contextmanager
def users_own_redis_port():
    """127.0.0.1:6379 taken, as by a Redis of the user's own (or already taken by one)."""
    with socket.socket() as listener:
        with contextlib.suppress(OSError):
            listener.bind(("127.0.0.1", 6379))
            listener.listen()
        assert port_open(6379)
        yield


@pytest.fixture(scope="module")
def side_by_side(docker_client, base_image):
    """Two Docker clusters and a local one at once."""
    started = []
    with users_own_redis_port():
        try:
            for name, ports in (("side-a", SIDE_A), ("side-b", SIDE_B)):
                started.append(ClipperConnection(DockerContainerManager(cluster_name=name, base_image=base_image,
                                                                        **ports)))
                started[-1].start_clipper()
            started.append(ClipperConnection(LocalContainerManager(cluster_name="side-local", **LOCAL)))
            started[-1].start_clipper()
            yield dict(zip(("a", "b", "local"), started))
        finally:
            for conn in started:
                conn.stop_all(graceful=False)


def test_two_docker_clusters_and_a_local_one_run_side_by_side(side_by_side):
    for conn in side_by_side.values():
        metrics = requests.get(f"http://{conn.get_metric_addr()}/metrics", timeout=10)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
    assert {key: conn.get_metric_addr() for key, conn in side_by_side.items()} == {
        "a": "localhost:32390", "b": "localhost:13390", "local": "localhost:14390"}
    # Each has its own Redis: what one registers, the others do not see.
    side_by_side["a"].register_application("only-in-a", "doubles", "0", 100000)
    assert [app["name"] for app in side_by_side["a"].get_all_apps(verbose=True)] == ["only-in-a"]
    assert side_by_side["b"].get_all_apps() == [] and side_by_side["local"].get_all_apps() == []


def test_a_taken_port_raises_what_clipper_era_code_catches(side_by_side, docker_client, base_image):
    clashing = ClipperConnection(DockerContainerManager(cluster_name="side-clash", base_image=base_image,
                                                        clipper_query_port=SIDE_A["clipper_query_port"],
                                                        clipper_management_port=15338, clipper_rpc_port=15700))
    with pytest.raises(docker.errors.APIError) as raised:      # as 0.4.1's engine error was
        clashing.start_clipper()
    assert isinstance(raised.value, ClipperException)
    assert str(raised.value) == raised.value.msg == (
        "Port 32337 (query frontend) is already in use on 127.0.0.1. Give this cluster ports of its own "
        "(clipper_query_port, clipper_management_port, clipper_rpc_port, clipper_metric_port of its "
        "container manager), or stop whatever uses it, e.g. "
        "another Clipper cluster with: python closeClipper.py (`clipper stop` on the command line), "
        "which stops every Clipper cluster of this state directory and Docker engine; --cluster NAME stops one")
    assert not docker_client.containers.list(all=True, filters={"label": f"{CLIPPER_DOCKER_LABEL}=side-clash"})


def test_0_4_1_attributes_and_get_clipper_logs(side_by_side, tmp_path):
    manager = DockerContainerManager(cluster_name="side-a", use_centralized_log=True, redis_ip="10.0.0.9",
                                     extra_container_kwargs={"labels": {"team": "x"}}, **SIDE_A)
    assert manager.centralize_log is True and DockerContainerManager().centralize_log is False
    assert isinstance(manager.docker_client, docker.DockerClient)
    assert (manager.public_hostname, manager.redis_ip, manager.external_redis, manager.redis_port,
            manager.prometheus_port, manager.docker_network, manager.cluster_identifier) == (
        "localhost", "10.0.0.9", True, 6379, 9090, "clipper_network", "side-a")
    assert manager.common_labels == {"team": "x", CLIPPER_DOCKER_LABEL: "side-a"}
    assert manager.extra_container_kwargs == {} and manager.logging_system_instance is None
    conn = ClipperConnection(manager)
    conn.connect()
    logs = conn.get_clipper_logs(logging_dir=str(tmp_path))
    assert len(logs) == 3 and all(Path(path).stat().st_size > 0 for path in logs)


def build_rpc_image(client, base_image):
    """An image as a user builds one: their own container script on a plain Python base."""
    files = {"Dockerfile": (
        f"FROM {base_image}\n"
        "RUN python3 -m venv /venv\n"
        "COPY pip-ca.cr[t] clipper_rpc.py rpc_container.py /rpc/\n"
        "RUN if [ -f /rpc/pip-ca.crt ]; then export PIP_CERT=/rpc/pip-ca.crt; fi; /venv/bin/pip install -q pyzmq\n"
        'CMD ["/venv/bin/python", "/rpc/rpc_container.py"]\n').encode(),
        "clipper_rpc.py": (ROOT / "tests" / "compat" / "clipper_rpc.py").read_bytes(),
        "rpc_container.py": (ROOT / "tests" / "docker" / "rpc_container.py").read_bytes()}
    if pip_ca_bundle():
        files["pip-ca.crt"] = pip_ca_bundle().read_bytes()
    build_image(client, RPC_IMAGE, files)


def build_image(client, tag, files):
    """Build ``tag`` from a context of ``{name: bytes}``."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, network_mode="host", rm=True)


def test_deploy_model_runs_the_users_own_image_with_clippers_environment(side_by_side, docker_client, base_image):
    build_rpc_image(docker_client, base_image)
    conn = side_by_side["b"]
    try:
        conn.register_application("own-image", "doubles", "default", 2_000_000)
        conn.deploy_model("own-image", 3, "doubles", RPC_IMAGE, num_replicas=2)
        conn.link_model_to_app("own-image", "own-image")
        response = requests.post(f"http://{conn.get_query_addr()}/own-image/predict",
                                 json={"input": [1.5, 2.0]}, timeout=10)
        assert response.json()["output"] == "own-image:3:3.5", response.text
        assert conn.get_num_replicas("own-image", 3) == 2
        assert len(conn.get_all_model_replicas()) == 2
    finally:
        conn.stop_all_model_containers()
        docker_client.images.remove(RPC_IMAGE, force=True)


def test_a_container_written_for_clippers_rpc_module_runs_from_the_runtime_image(side_by_side, docker_client,
                                                                                   base_image):
    """A user's image: the runtime image, a Clipper-style container script (``import rpc``)
    in /container, as Clipper's images kept it, and that script as the entrypoint."""
    build_image(docker_client, RPC_MODULE_IMAGE, {
        "Dockerfile": (f"FROM {ensure_runtime_image(docker_client, base_image)}\n"
                       "COPY clipper_sum_container.py /container/\n"
                       'ENTRYPOINT ["python", "/container/clipper_sum_container.py"]\n').encode(),
        "clipper_sum_container.py": (ROOT / "tests" / "compat" / "clipper_sum_container.py").read_bytes()})
    conn = side_by_side["b"]
    try:
        conn.register_application("rpc-module", "doubles", "default", 2_000_000)
        conn.deploy_model("rpc-module", 1, "doubles", RPC_MODULE_IMAGE)
        conn.link_model_to_app("rpc-module", "rpc-module")
        response = requests.post(f"http://{conn.get_query_addr()}/rpc-module/predict",
                                 json={"input": [1.5, 2.0]}, timeout=10)
        assert response.json()["output"] == 3.5, response.text
        # Clipper's images' HEALTHCHECK tests the file its rpc module wrote once serving.
        [replica] = docker_client.containers.list(filters={"ancestor": RPC_MODULE_IMAGE})
        assert replica.exec_run(["test", "-f", "/model_is_ready.check"]).exit_code == 0
    finally:
        conn.stop_all_model_containers()
        docker_client.images.remove(RPC_MODULE_IMAGE, force=True)


def test_a_redis_of_the_users_own_is_used_and_found_again(docker_client, base_image, tmp_path):
    """0.4.1's redis_ip/redis_port: no Redis container; connect() reads the port label."""
    server = subprocess.Popen([find_redis_server(), "--port", "18379", "--bind", "127.0.0.1", "--save", "",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    conn = ClipperConnection(DockerContainerManager(cluster_name="side-ext", base_image=base_image,
                                                    redis_ip="127.0.0.1", redis_port=18379, **EXTERNAL))
    try:
        conn.start_clipper()
        conn.register_application("in-users-redis", "doubles", "0", 100000)
        assert redis.Redis(port=18379, db=5).hget("in-users-redis", "input_type") == b"doubles"
        roles = {c.labels["ai.clipper.role"] for c in docker_client.containers.list(
            filters={"label": f"{CLIPPER_DOCKER_LABEL}=side-ext"})}
        assert roles == {"management-frontend", "query-frontend"}
        again = DockerContainerManager(cluster_name="side-ext")
        again.connect()
        assert (again.external_redis, again.redis_port) == (True, 18379)
    finally:
        conn.stop_all(graceful=False)
        server.terminate()
        server.wait(10)


# Clipper's noop container's name, with a tag of the tests' own (a user's image is left alone).
NOOP_IMAGE = "clipper/noop-container:tests"


def model_containers_of(client, cluster_name, ancestor):
    """As Clipper's integration tests count a model's containers: by the image they descend from."""
    return client.containers.list(filters={"ancestor": ancestor, "label": f"{CLIPPER_DOCKER_LABEL}={cluster_name}"})


def test_clippers_noop_container_is_served_by_name_without_a_pull(side_by_side, docker_client, caplog):
    """Clipper's tests deploy its noop container by name, and build on it; 0.4.1 pulled it."""
    conn = side_by_side["a"]
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(NOOP_IMAGE, force=True)
    try:
        conn.register_application("noop-app", "doubles", "default", 2_000_000)
        with caplog.at_level("INFO"):
            conn.deploy_model("noop", "1", "doubles", NOOP_IMAGE, num_replicas=2)
        assert f"Clipper's noop container {NOOP_IMAGE} is not on this Docker engine" in caplog.text
        conn.link_model_to_app("noop-app", "noop")
        response = requests.post(f"http://{conn.get_query_addr()}/noop-app/predict", json={"input": [1.5]}, timeout=10)
        assert response.json() == {"query_id": 0, "output": 1.0, "default": False}, response.text
        assert len(model_containers_of(docker_client, "side-a", NOOP_IMAGE)) == 2
        # As 0.4.1 built on it: a model image built on the noop container descends from it.
        conn.build_and_deploy_model("noop-built", "1", "doubles", None, NOOP_IMAGE)
        assert len(model_containers_of(docker_client, "side-a", NOOP_IMAGE)) == 3
        assert len(model_containers_of(docker_client, "side-a", "side-a-noop-built:1")) == 1
    finally:
        conn.stop_all_model_containers()
        docker_client.images.remove("side-a-noop-built:1", force=True)
        docker_client.images.remove(NOOP_IMAGE, force=True)


def test_our_noop_container_image_on_another_runtime_image_is_built_again(side_by_side, docker_client, base_image):
    ensure_noop_image(docker_client, base_image, NOOP_IMAGE)     # as another client's runtime left it
    conn = side_by_side["b"]
    try:
        conn.build_model("on-noop", "1", None, NOOP_IMAGE)
        assert docker_client.images.get(NOOP_IMAGE).labels[NOOP_RUNTIME_LABEL] == conn.cm.runtime_image
    finally:
        docker_client.images.remove("side-b-on-noop:1", force=True)
        docker_client.images.remove(NOOP_IMAGE, force=True)


def test_a_noop_container_image_of_the_users_own_is_used_as_it_is(side_by_side, docker_client, base_image):
    users_own = "clipper/noop-container:users-own"
    docker_client.images.get(base_image).tag(users_own)
    try:
        side_by_side["b"].build_model("on-users-noop", "1", None, users_own)
        assert docker_client.images.get(users_own).id == docker_client.images.get(base_image).id
        ancestors = [layer["Id"] for layer in docker_client.images.get("side-b-on-users-noop:1").history()]
        assert docker_client.images.get(base_image).id in ancestors
    finally:
        docker_client.images.remove("side-b-on-users-noop:1", force=True)
        docker_client.images.remove(users_own)


def test_an_image_that_cannot_be_had_is_one_clear_error_and_registers_nothing(side_by_side):
    conn = side_by_side["b"]
    with pytest.raises(docker.errors.ImageNotFound) as raised:      # the engine's type, as in 0.4.1
        conn.deploy_model("absent", 1, "doubles", "clipper-test/absent-image:1")
    assert isinstance(raised.value, ClipperException)
    assert str(raised.value).startswith(
        "The image clipper-test/absent-image:1 is not on this Docker engine and cannot be pulled (")
    assert str(raised.value).endswith("Build it with build_model (or deploy with build_and_deploy_model), "
                                      "or load it into the engine: docker load -i <file>")
    assert conn.get_all_models() == [] and conn.get_num_replicas("absent", 1) == 0


def test_two_clusters_deploying_one_model_name_and_version_keep_their_own_models(side_by_side, docker_client):
    """As in 0.4.1, a model image is named for its cluster, so another cluster's build of
    the same name:version never replaces it (a later scale-up would start the other's model)."""
    conns = {"a": side_by_side["a"], "b": side_by_side["b"]}
    images = []
    try:
        for side, conn in conns.items():
            conn.register_application("same-name", "doubles", "default", 2_000_000)
            images.append(conn.build_model("same-name", 1, None, NOOP_IMAGE))
            python_deployer.deploy_python_closure(conn, "same-name", 2, "doubles",
                                                  lambda xs, side=side: [side] * len(xs))
            conn.link_model_to_app("same-name", "same-name")
        assert images == ["side-a-same-name:1", "side-b-same-name:1"]
        conns["a"].set_num_replicas("same-name", 3)
        answers = {requests.post(f"http://{conns['a'].get_query_addr()}/same-name/predict",
                                 json={"input": [float(k)]}, timeout=10).json()["output"] for k in range(30)}
        assert answers == {"a"}
    finally:
        for conn in conns.values():
            conn.stop_all_model_containers()
        for image in [f"side-{side}-same-name:{version}" for side in conns for version in (1, 2)] + [NOOP_IMAGE]:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(image, force=True)
