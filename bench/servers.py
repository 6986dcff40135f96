"""The servers under test, each a context manager that starts it, yields its URL and stops it.

- our cluster (LocalContainerManager on the benchmark's own ports);
- the floor (bench/floor_server.py) in a subprocess;
- the peer (bench/ray_peer.py, Ray Serve) in its own venv, with every process Ray starts
  found again by a marker in its environment and stopped, nothing else.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from clipper.cluster import cluster_dir  # noqa: E402
from clipper_admin import ClipperConnection, LocalContainerManager  # noqa: E402

# One port block for the whole benchmark, all on 127.0.0.1.
CLUSTER_PORTS = dict(clipper_query_port=21337, clipper_management_port=21338,
                     clipper_rpc_port=27000, clipper_metric_port=21390)
FLOOR_PORT, PEER_PORT = 21400, 21401
# Ray Serve's own listeners that take fixed ports, moved into the block. (Ray's internal
# services, GCS, raylet and agents, take free ports, and listen on every interface: Ray's
# design, as are HAProxy's stats and metrics listeners.)
RAY_PORTS = {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": 21402, "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": 21403,
             "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": 21404, "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": 21405,
             "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 21406, "RAY_SERVE_HAPROXY_METRICS_PORT": 21407,
             "RAY_SERVE_HAPROXY_STATS_PORT": 21408}
RAY_VENV = Path(os.environ.get("CLIPPER_BENCH_RAY_VENV", Path.home() / ".cache/clipper-bench/ray-venv"))
PEER_MARKER_ENV = "CLIPPER_BENCH_PEER_RUN"


def port_free(port: int) -> bool:
    with contextlib.closing(socket.socket()) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def wait_for_free_port(port: int, timeout: float = 30) -> None:
    """The previous server's processes (Ray's proxies) may release the port a moment late."""
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} is taken: stop what listens there first")
        time.sleep(0.2)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, process.args))} exited with {process.returncode}")
        if not port_free(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


def wait_until_answered(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until a prediction gets a 200: Ray Serve listens before its replica is up."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, data=b'{"input": [1.0, 2.0]}',
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except OSError as error:        # URLError, HTTPError (a 5xx), refused, reset
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer: {error}") from error
        time.sleep(0.2)


@contextlib.contextmanager
def subprocess_server(command, port: int, env=None):
    """Run ``command`` in its own process group until the block ends; yields its predict URL.
    Its output goes to a temporary log, whose end is in the error if it does not come up."""
    wait_for_free_port(port)    # else we would measure whatever listens there
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/bench/predict"
            try:
                wait_for_port(port, process)
                wait_until_answered(url, process)
            except RuntimeError as error:
                log.seek(0)
                raise RuntimeError(f"{error}; its output ended with:\n" + "".join(log.readlines()[-15:])) from None
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def floor(kind: str, loop: str = "uvloop"):
    """kind: "bare" (uvloop + httptools) or "aiohttp"; loop: "uvloop" or "asyncio"."""
    return subprocess_server([sys.executable, str(HERE / "floor_server.py"), kind, str(FLOOR_PORT), loop],
                             FLOOR_PORT)


def ray_available() -> bool:
    return (RAY_VENV / "bin" / "python").exists() and subprocess.run(
        [str(RAY_VENV / "bin" / "python"), "-c", "import ray.serve"], capture_output=True).returncode == 0


def ray_version() -> str:
    return subprocess.run([str(RAY_VENV / "bin" / "python"), "-c", "import ray; print(ray.__version__)"],
                          capture_output=True, text=True).stdout.strip()


def ray_environment(throughput_optimized: bool, marker: str, scratch: str) -> dict:
    """Ray's files in our scratch directory and its listening ports in our block."""
    env = {PEER_MARKER_ENV: marker, "RAY_TMPDIR": scratch, **{name: str(port) for name, port in RAY_PORTS.items()}}
    if throughput_optimized:
        # As Ray's docs say for high throughput (Ray >= 2.55): the optimized data path and the
        # HAProxy ingress. HAProxy's files go to our scratch directory, not /tmp/haproxy-serve.
        haproxy = Path(scratch) / "hap"     # short: HAProxy allows socket paths of 97 bytes
        env.update(RAY_SERVE_THROUGHPUT_OPTIMIZED="1", RAY_SERVE_ENABLE_HA_PROXY="1",
                   RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(haproxy / "haproxy.cfg"),
                   RAY_SERVE_HAPROXY_SOCKET_PATH=str(haproxy / "admin.sock"),
                   RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(haproxy),
                   RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(haproxy / "server-state"),
                   RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=str(haproxy / "metrics.sock"))
    return env


def processes_marked(marker: str):
    """Every process whose environment carries our marker: Ray's, started by our driver."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(PEER_MARKER_ENV) == marker:
                yield process


def stop_marked(marker: str, grace: float = 10) -> None:
    cluster_dir.terminate(list(processes_marked(marker)), grace)


@contextlib.contextmanager
def ray_peer(throughput_optimized: bool, max_ongoing_requests: int = 256):
    """Ray Serve with the same function: by default, or throughput-optimized (its env flags and
    up to ``max_ongoing_requests`` in flight per replica instead of the default 5)."""
    marker = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="br") as scratch:
        command = [str(RAY_VENV / "bin" / "python"), str(HERE / "ray_peer.py"), str(PEER_PORT), scratch]
        if throughput_optimized:
            command.append(str(max_ongoing_requests))
        try:
            with subprocess_server(command, PEER_PORT, ray_environment(throughput_optimized, marker, scratch)) as url:
                yield url
        finally:
            stop_marked(marker)


@contextlib.contextmanager
def cluster(cache_size: int, query_workers: int = 1):
    """Our cluster on the benchmark's ports; its state goes where CLIPPER_STATE_DIR says.
    ``query_workers``: query frontend processes sharing the query port."""
    conn = ClipperConnection(LocalContainerManager(cluster_name="bench", query_workers=query_workers,
                                                   **CLUSTER_PORTS))
    try:
        conn.start_clipper(cache_size=cache_size)
        yield conn
    finally:
        conn.stop_all()


def query_frontend_pid(conn) -> int:
    return next(p["pid"] for p in conn.cm.cluster.processes() if p["role"] == "query-frontend")


def app_url(app: str) -> str:
    return f"http://127.0.0.1:{CLUSTER_PORTS['clipper_query_port']}/{app}/predict"
