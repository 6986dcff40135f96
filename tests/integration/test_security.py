"""Security defaults: loopback only, private state, optional admin token kept out of sight."""
import os
import stat

import psutil
import pytest
import requests

from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper_admin.deployers import python as python_deployer
from conftest import local_cluster

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


def test_the_token_appears_in_no_log_and_no_command_line(guarded, tmp_path):
    for path in guarded.get_clipper_logs(str(tmp_path)):
        assert TOKEN not in open(path, errors="replace").read(), path
    for process in guarded.cm.cluster.processes():
        assert TOKEN not in " ".join(psutil.Process(process["pid"]).cmdline())


def test_state_and_model_directories_are_private(guarded):
    cluster_dir = guarded.cm.cluster.path
    for path in [cluster_dir, cluster_dir / "logs", cluster_dir / "redis",
                 *(cluster_dir / "models").iterdir()]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"
