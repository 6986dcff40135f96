"""A cluster's servers start at once: a frontend that is up before Redis waits for it.

Redis and both frontends are started together (the frontends' imports take longer than
Redis's start, and nothing waits in between), so a frontend must not fail when Redis does
not answer yet: it retries until it does, and is ready only then. The processes are the
real ones, started from the launch recipe.
"""
import os
import subprocess
import sys
import time

import pytest

from clipper import launch as recipe
from clipper.cluster.cluster_dir import MARKER_ENV, cluster_processes
from clipper.config import Config
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
from helpers import ROOT

PORTS = dict(query_port=26337, management_port=26338, rpc_port=26700, metrics_port=26390)


@pytest.fixture
def start(clipper_state_dir, tmp_path):
    """start(launch): run one role of the launch recipe; stopped after the test."""
    processes = []

    def run(launch):
        env = {**os.environ, **launch.env, "PYTHONPATH": str(ROOT),
               MARKER_ENV: str(clipper_state_dir / "start-order")}
        process = subprocess.Popen(launch.argv(), env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        processes.append(process)
        return process

    yield run
    for process in reversed(processes):
        process.terminate()
        process.communicate(timeout=10)


def test_query_frontend_started_before_redis_waits_for_it(start, tmp_path):
    config = Config(host="127.0.0.1", redis_url=f"unix://{tmp_path / 'redis.sock'}",
                    redis_dir=str(tmp_path / "redis"), **PORTS)
    frontend_launch = recipe.query_frontend(config)
    frontend = start(frontend_launch)
    time.sleep(1.5)                     # long enough to have imported and found no Redis
    assert frontend.poll() is None, frontend.stderr.read().decode()[-2000:]
    assert not frontend_launch.is_ready()     # ready means serving: not without Redis
    start(recipe.redis(config))
    recipe.wait_until_ready([frontend_launch], lambda: None if frontend.poll() is None
                            else f"the query frontend exited: {frontend.stderr.read().decode()[-2000:]}",
                            timeout=30)


def test_a_frontend_that_keeps_exiting_ends_the_start_with_its_log(clipper_state_dir, tmp_path, monkeypatch):
    """The supervisor restarts a frontend that exits; one that exits at every start makes
    start_clipper fail within seconds, with its log, instead of after the start's timeout."""
    crashing = tmp_path / "site"
    crashing.mkdir()
    (crashing / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'query-frontend' in sys.argv:\n"
        "    sys.stderr.write('deliberate crash of the query frontend at its start\\n')\n"
        "    os._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(crashing))
    conn = ClipperConnection(LocalContainerManager(
        cluster_name="crashing", clipper_query_port=PORTS["query_port"],
        clipper_management_port=PORTS["management_port"], clipper_rpc_port=PORTS["rpc_port"],
        clipper_metric_port=PORTS["metrics_port"]))
    started = time.monotonic()
    with pytest.raises(ClipperException, match="query-frontend keeps exiting") as failed:
        conn.start_clipper()
    assert "deliberate crash of the query frontend" in str(failed.value)
    assert time.monotonic() - started < 60, "not the start's timeout (120 s)"
    assert not conn.cm.cluster.is_running() and not cluster_processes(conn.cm.cluster)


def test_a_relative_state_directory_works_as_the_absolute_one(clipper_state_dir, monkeypatch):
    """The supervisor runs in the cluster's directory: a relative CLIPPER_STATE_DIR named
    another place there, and it died at once (KeyError: 'config')."""
    from clipper_admin.deployers import python as python_deployer
    import requests
    monkeypatch.chdir(clipper_state_dir)
    monkeypatch.setenv("CLIPPER_STATE_DIR", "relative")
    conn = ClipperConnection(LocalContainerManager(
        cluster_name="relative", clipper_query_port=PORTS["query_port"],
        clipper_management_port=PORTS["management_port"], clipper_rpc_port=PORTS["rpc_port"],
        clipper_metric_port=PORTS["metrics_port"]))
    conn.start_clipper()
    try:
        assert conn.cm.cluster.path == clipper_state_dir / "relative" / "relative"
        python_deployer.create_endpoint(conn, "sums", "doubles", lambda xs: [str(sum(x)) for x in xs])
        answer = requests.post(f"http://{conn.get_query_addr()}/sums/predict", json={"input": [1.0, 2.0]},
                               timeout=10).json()
        assert answer["output"] == 3.0 and answer["default"] is False
    finally:
        conn.stop_all(graceful=False)


@pytest.mark.parametrize("name", ["..", ".", "", "../precious", "a/b", ".hidden", "x\x00y", None])
def test_a_cluster_name_that_names_another_place_is_refused_and_nothing_is_deleted(
        clipper_state_dir, monkeypatch, name):
    """A cluster's name is its state directory's: '..' made stop_all() delete the directory
    above the state directory (with the default one, the user's home)."""
    sandbox = clipper_state_dir / "sandbox"
    (sandbox / "precious").mkdir(parents=True, exist_ok=True)
    (sandbox / "precious" / "thesis.tex").write_text("keep")
    monkeypatch.setenv("CLIPPER_STATE_DIR", str(sandbox / "state"))
    with pytest.raises(ClipperException, match="A cluster name is 1 to 128 letters"):
        ClipperConnection(LocalContainerManager(cluster_name=name)).stop_all()
    assert (sandbox / "precious" / "thesis.tex").read_text() == "keep"


# Waits for the go file, then starts the cluster "twice" on the ports from argv[1].
STARTER = """
import os, sys, time
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
base = int(sys.argv[1])
conn = ClipperConnection(LocalContainerManager(
    cluster_name="twice", clipper_query_port=base, clipper_management_port=base + 1,
    clipper_rpc_port=base + 2, clipper_metric_port=base + 3))
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    conn.start_clipper()
    print("started", flush=True)
except ClipperException as error:
    print("refused:", str(error).splitlines()[0], flush=True)
"""


def test_two_starts_of_one_cluster_at_once_leave_it_running_once(clipper_state_dir, tmp_path):
    """Each took the other's new supervisor for the leftovers of a crash and stopped it:
    both failed, and no cluster was left."""
    go = tmp_path / "go"
    starters = [subprocess.Popen([sys.executable, "-c", STARTER, str(port), str(go)], cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for port in (26437, 26537)]
    try:
        assert [starter.stdout.readline().strip() for starter in starters] == ["ready", "ready"]
        go.touch()
        outcomes = sorted(starter.communicate(timeout=120)[0].strip() for starter in starters)
        assert outcomes[0].startswith("refused: Clipper cluster 'twice' is already running"), outcomes
        # How to stop it names it: closeClipper.py alone would stop every cluster on the machine.
        assert "python closeClipper.py --cluster twice (" in outcomes[0], outcomes
        assert outcomes[1] == "started", outcomes
        conn = ClipperConnection(LocalContainerManager(cluster_name="twice"))
        conn.connect()
        assert conn.get_all_apps() == []
    finally:
        for starter in starters:
            starter.kill()
            starter.communicate()
        ClipperConnection(LocalContainerManager(cluster_name="twice")).stop_all(graceful=False)


@pytest.mark.parametrize("scheme, path", [("http", "/admin/ping"), ("tcp", ""), ("redis", "")])
def test_a_probe_that_connects_to_itself_leaves_the_port_to_the_server(monkeypatch, scheme, path):
    """While a server imports, its port is probed; on a port of the ephemeral range the
    kernel may give a probe that very port as its own, so that it connects to itself. The
    probe must say "not ready" and leave the port free for the server (which binds with
    SO_REUSEADDR, as asyncio does): not held in TIME_WAIT for a minute."""
    import socket
    with socket.socket() as finder:
        finder.bind(("127.0.0.1", 0))
        port = finder.getsockname()[1]
    connect = socket.create_connection

    def from_the_same_port(address, *args, **kwargs):   # what the kernel may choose
        kwargs.pop("source_address", None)
        return connect(address, *args[:1], source_address=("127.0.0.1", address[1]))

    monkeypatch.setattr(socket, "create_connection", from_the_same_port)
    launch = recipe.Launch(recipe.MANAGEMENT_FRONTEND, {}, f"{scheme}://127.0.0.1:{port}{path}")
    assert not launch.is_ready()
    monkeypatch.undo()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))       # EADDRINUSE if the probe's socket lingers
        server.listen()
