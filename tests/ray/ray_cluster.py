"""A real three-node Ray cluster on loopback for the Ray backend's tests (skipped without Ray);
the session fixture ``ray_cluster`` (tests/conftest.py) runs it. (No conftest.py here: test
modules elsewhere import names from ``conftest``, and a second one would shadow the first.)

Ray resolves 127.0.0.1 to the machine's primary address and then listens there. What keeps
it on loopback, set here for the cluster and for this process (the driver):
- RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's single-machine mode (its default on macOS and
  Windows), in which a node's address is 127.0.0.1 and every server binds it; `ray start`
  refuses worker nodes in that mode, so the nodes come from Ray's own multi-node test
  harness, ray.cluster_utils.Cluster (tests/ray/cluster_host.py), each its own processes;
- AUTOSCALER_METRIC_PORT and DASHBOARD_METRIC_PORT: fixed ports, moved into our block;
- a HOME with ~/ray_bootstrap_config.yaml: without it, Ray's dashboard asks the cloud
  metadata services (169.254.169.254, metadata.google.internal) who hosts it, even with
  usage stats off; and RAY_USAGE_STATS_REPORT_URL on loopback (see below);
- health checks every 0.5 s: a dead node is declared dead in ~2 s, not ~15 s.
Every process of the cluster carries RAY_TEST_MARKER_ENV; the session fails if any is left.
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from ray_helpers import RAY_TEST_MARKER_ENV, marked_processes

HERE = Path(__file__).resolve().parent
GCS_PORT = 21500
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "AUTOSCALER_METRIC_PORT": "21510",
    "DASHBOARD_METRIC_PORT": "21511",
    "RAY_USAGE_STATS_ENABLED": "0",
    # With usage stats off, Ray still reports "off" to usage-stats.ray.io: to loopback instead
    # (nothing listens there).
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:21512/",
}
FAST_NODE_FAILURE_ENV = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                         "RAY_health_check_failure_threshold": "3"}


@contextlib.contextmanager
def loopback_ray_cluster():
    """``{"address", "nodes": [{"node_id", "raylet_pid"}, ...] (head, GPU worker, worker),
    "marker", "env"}``; the test process joins it as a driver through RayContainerManager."""
    # Ray reads its settings when imported: this process is a driver of the test cluster too.
    if "ray" in sys.modules:
        pytest.fail("Ray was imported before the Ray tests set their loopback settings (a test "
                    "module or a module it imports at its top): this driver would then take the "
                    "machine's other address and hang joining the cluster. Import Ray inside the "
                    "test that needs it.")
    os.environ.update(LOOPBACK_ENV)
    ray = pytest.importorskip("ray", reason="the Ray backend's tests need Ray: pip install -r requirements-ray.txt")
    with ray_cluster_process(GCS_PORT, LOOPBACK_ENV) as cluster:
        os.environ["RAY_ADDRESS"] = cluster["address"]     # where RayContainerManager finds it
        try:
            yield cluster
        finally:
            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)


@contextlib.contextmanager
def other_loopback_ray_cluster():
    """A second, one-node Ray cluster on this machine, on ports of its own; this process is not
    its driver (``cluster["env"]`` is the environment of one)."""
    ports = {"AUTOSCALER_METRIC_PORT": "21610", "DASHBOARD_METRIC_PORT": "21611",
             "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:21612/"}
    with ray_cluster_process(21600, {**LOOPBACK_ENV, **ports}, "--head-only") as cluster:
        yield cluster


@contextlib.contextmanager
def ray_cluster_process(gcs_port, loopback_env, *options):
    """tests/ray/cluster_host.py, with the processes of its Ray cluster marked and stopped."""
    scratch = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))    # short: unix socket paths
    (scratch / "home").mkdir()
    (scratch / "home" / "ray_bootstrap_config.yaml").write_text("{}\n")
    marker = str(scratch)
    env = {**os.environ, **loopback_env, **FAST_NODE_FAILURE_ENV, RAY_TEST_MARKER_ENV: marker,
           "HOME": str(scratch / "home"), "RAY_TMPDIR": str(scratch)}
    env.pop("RAY_ADDRESS", None)          # another test cluster's, where this one is the second
    host = subprocess.Popen([sys.executable, str(HERE / "cluster_host.py"), str(gcs_port), *options],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(scratch / "cluster_host.log", "wb"), env=env, text=True)
    line = host.stdout.readline()
    if not line:
        host.wait(30)
        raise RuntimeError(f"the Ray test cluster did not start:\n{(scratch / 'cluster_host.log').read_text()[-3000:]}")
    cluster = {**json.loads(line), "marker": marker}
    cluster["env"] = {**env, "RAY_ADDRESS": cluster["address"]}
    try:
        yield cluster
    finally:
        host.stdin.close()
        try:
            host.wait(60)
        except subprocess.TimeoutExpired:
            host.kill()
        leftovers, names = marked_processes(marker), []
        for process in leftovers:
            with contextlib.suppress(psutil.Error):    # named before the kill: a dead one has no name
                names.append((process.pid, process.name()))
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(leftovers, timeout=10)
        if not os.environ.get("CLIPPERTEST_KEEP_RAY_LOGS"):
            subprocess.run(["rm", "-rf", str(scratch)])
        assert not leftovers, f"left running after the Ray cluster stopped: {names}"
