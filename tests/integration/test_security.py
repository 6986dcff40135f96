"""Security defaults: loopback only, private state, optional admin token kept out of sight,
and with a token, an RPC port that only the cluster's own containers can use."""
import os
import socket
import stat
import threading
import time

import psutil
import pytest
import requests
import zmq

from clipper.rpc import codec
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper_admin.deployers import python as python_deployer
import helpers
from helpers import local_cluster

TOKEN = "s3cret-token-for-tests"
PORTS = dict(query_port=11337, management_port=11338, rpc_port=17000, metric_port=11390)


def echo(xs):
    return [str(len(x)) for x in xs]


@pytest.fixture(scope="module")
def guarded(monkeypatch_module):
    monkeypatch_module.setenv("CLIPPER_ADMIN_TOKEN", TOKEN)
    with local_cluster(name="guarded", **PORTS) as conn:
        python_deployer.create_endpoint(conn, "secured", "doubles", echo)
        yield conn


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def listening_addresses(conn):
    pids = {p["pid"] for p in conn.cm.cluster.processes()}
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_every_listener_is_on_loopback(guarded):
    addresses = listening_addresses(guarded)
    assert {port for _, port in addresses} >= {11337, 11338, 17000, 11390}
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}


def test_admin_calls_need_the_token(guarded):
    url = f"http://{guarded.cm.get_admin_addr()}/admin/get_all_applications"
    assert requests.post(url, json={"verbose": False}, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(url, json={"verbose": False}, headers=wrong, timeout=5).status_code == 401
    not_utf8 = {"Authorization": b"Bearer \xff" + TOKEN.encode()}      # was a 500 and a traceback
    assert requests.post(url, json={"verbose": False}, headers=not_utf8, timeout=5).status_code == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.post(url, json={"verbose": False}, headers=right, timeout=5).json() == ["secured"]
    # Our client finds the token in the (private) state of the cluster it connects to.
    other = ClipperConnection(LocalContainerManager(cluster_name="guarded", admin_token=None))
    other.connect()
    assert other.get_all_apps() == ["secured"]
    # Predictions stay open, as in Clipper.
    response = requests.post(f"http://{guarded.get_query_addr()}/secured/predict",
                             json={"input": [1.0, 2.0]}, timeout=5)
    assert response.json()["output"] == 2


def test_a_wrong_token_is_refused_by_the_client_too(guarded):
    impostor = ClipperConnection(LocalContainerManager(cluster_name="guarded", admin_token="bad"))
    impostor.connect()
    with pytest.raises(ClipperException, match="401"):
        impostor.get_all_apps()


def rpc_keys(conn):
    config = conn.cm.cluster.settings()["config"]
    return {name: config[name] for name in ("rpc_server_secret_key", "rpc_client_public_key",
                                            "rpc_server_public_key", "rpc_client_secret_key")}


def test_the_token_and_keys_appear_in_no_log_and_no_command_line(guarded, tmp_path):
    secrets = [TOKEN, rpc_keys(guarded)["rpc_server_secret_key"], rpc_keys(guarded)["rpc_client_secret_key"]]
    assert all(secrets)
    for path in guarded.get_clipper_logs(str(tmp_path)):
        text = open(path, errors="replace").read()
        assert not any(secret in text for secret in secrets), path
    for process in guarded.cm.cluster.processes():
        command_line = " ".join(psutil.Process(process["pid"]).cmdline())
        assert not any(secret in command_line for secret in secrets)


def rpc_peer(name, seconds=3.0, curve=None):
    return helpers.rpc_peer(PORTS["rpc_port"], name, seconds=seconds, curve=curve)


def test_an_rpc_peer_without_the_cluster_key_is_refused_and_gets_no_query(guarded):
    answers = []

    def predict_meanwhile():
        for _ in range(30):
            answers.append(requests.post(f"http://{guarded.get_query_addr()}/secured/predict",
                                         json={"input": [1.0, 2.0]}, timeout=5).json())
            time.sleep(0.05)
    load = threading.Thread(target=predict_meanwhile)
    load.start()
    keys = rpc_keys(guarded)
    stranger = zmq.curve_keypair()[1].decode()       # knows the frontend's key, not the containers'
    plain, wrong_key = rpc_peer("secured"), rpc_peer("secured", curve=(keys["rpc_server_public_key"], stranger))
    load.join()
    assert plain == [] and wrong_key == [], "an unauthenticated peer was answered"
    assert len(answers) == 30 and all(a["default"] is False and a["output"] == 2 for a in answers)
    assert [r["model_name"] for r in guarded.get_all_model_replicas(verbose=True)] == ["secured"]
    # A peer with the containers' key is admitted (so the refusals above are the keys' doing).
    admitted = rpc_peer("control", seconds=10,
                        curve=(keys["rpc_server_public_key"], keys["rpc_client_secret_key"]))
    assert any(getattr(m, "heartbeat_type", None) == codec.HEARTBEAT_REQUEST_METADATA for m in admitted)


OTHER_USER = 65534      # nobody


def test_replicas_reach_the_frontend_over_a_socket_only_its_owner_can_open(guarded):
    """The local backend's replicas send Clipper's RPC over a Unix socket in the private
    state directory (clipper.rpc.stream); CURVE keys still guard the TCP port."""
    path = str(guarded.cm.cluster.path / "rpc-0.sock")
    processes = guarded.cm.cluster.processes()
    replicas = [psutil.Process(p["pid"]) for p in processes if p["role"] == "model-container"]
    (frontend,) = [psutil.Process(p["pid"]) for p in processes if p["role"] == "query-frontend"]
    assert replicas
    for replica in replicas:
        assert not [c for c in replica.net_connections("inet") if c.raddr and c.raddr.port == PORTS["rpc_port"]]
    # The frontend's end of the socket: its listener, and one connection per replica.
    assert len([c for c in frontend.net_connections("unix") if c.laddr == path]) == 1 + len(replicas)
    if os.getuid() != 0:
        pytest.skip("needs root to try the socket as another user")
    child = os.fork()
    if child == 0:          # as another user: only a connect, then out
        status = 1
        try:
            os.setgid(OTHER_USER)
            os.setuid(OTHER_USER)
            socket.socket(socket.AF_UNIX).connect(path)
            status = 0
        except PermissionError:
            status = 13
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 13, "another user could open the RPC socket"


def test_state_and_model_directories_are_private(guarded):
    cluster_dir = guarded.cm.cluster.path
    for path in [cluster_dir, cluster_dir / "logs", cluster_dir / "redis",
                 *(cluster_dir / "models").iterdir()]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"
