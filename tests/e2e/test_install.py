"""The project as an installed package: ``pip install .`` gives both packages and the
``clipper`` command, and the example runs from outside the clone on the installed code."""
import shutil
import subprocess
import sys

import pytest

from scripts import (RESPONSE_LINE, ROOT, assert_nothing_left, pyenv_python, skip_if_offline,
                     venv_with_requirements)

PORTS = ["--query-port=21337", "--management-port=21338", "--rpc-port=27000", "--metric-port=21390"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with the project installed from this checkout (not importable from the clone)."""
    python = venv_with_requirements(sys.executable)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                              str(ROOT)], capture_output=True, text=True)
    skip_if_offline(install, "install the build backend (setuptools)")
    assert install.returncode == 0, install.stderr[-2000:]
    return python


def run(command, cwd, timeout=120):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_installed_package_serves_from_outside_the_clone(installed, tmp_path, clipper_state_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = run([str(installed), "-c", "import clipper, clipper_admin; print(clipper.__file__)"], elsewhere)
    assert located.returncode == 0 and str(ROOT) not in located.stdout, located.stdout + located.stderr
    shutil.copy(ROOT / "basicQuerySimplified.py", elsewhere)
    result = run([str(installed), "basicQuerySimplified.py"], elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sum(bool(RESPONSE_LINE.match(line)) for line in result.stdout.splitlines()) == 1
    assert_nothing_left(clipper_state_dir)


def test_clipper_command_starts_reports_and_stops_a_cluster(installed, tmp_path, clipper_state_dir):
    clipper = str(installed.parent / "clipper")
    started = run([clipper, "start", "--cluster-name=cli", *PORTS], tmp_path)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert "http://localhost:21337/<application>/predict" in started.stdout
        status = run([clipper, "status", "--cluster-name=cli"], tmp_path)
        assert status.returncode == 0 and '"query_address": "localhost:21337"' in status.stdout, status
        again = run([clipper, "start", "--cluster-name=cli", *PORTS], tmp_path)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = run([clipper, "stop", "--cluster-name=cli"], tmp_path)
    assert stopped.returncode == 0 and "Stopped Clipper cluster 'cli'" in stopped.stdout
    missing = run([clipper, "status", "--cluster-name=cli"], tmp_path)
    assert missing.returncode == 1 and "No running Clipper cluster named 'cli'" in missing.stderr
    assert "`clipper start` on the command line" in missing.stderr
    assert "A cluster on Docker or Ray: --backend docker" in missing.stderr     # where else to look
    assert_nothing_left(clipper_state_dir)


DEPLOY_FROM_ANOTHER_PYTHON = """
import requests
from clipper_admin import ClipperConnection, LocalContainerManager
from clipper_admin.deployers import python as python_deployer
conn = ClipperConnection(LocalContainerManager(cluster_name="cross"))
conn.connect()
python_deployer.create_endpoint(conn, "cross", "doubles", lambda xs: [str(sum(x)) for x in xs])
print(requests.post("http://" + conn.get_query_addr() + "/cross/predict", json={"input": [1.0, 2.5]}).text)
"""


def test_a_model_deployed_from_another_python_runs_on_an_installed_cluster(installed, tmp_path, clipper_state_dir):
    """The replica runs in the deploying interpreter; installed, our package sits in a
    site-packages whose numpy and pyzmq are built for the cluster's Python, and must not
    reach it (they did: the replica of a 3.9 client died on 3.11's pyzmq)."""
    other = pyenv_python("3.9")
    if other is None:
        pytest.skip("no Python 3.9 here (pyenv)")
    client = venv_with_requirements(other)
    clipper = str(installed.parent / "clipper")
    started = run([clipper, "start", "--cluster-name=cross", *PORTS], tmp_path)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        deployed = subprocess.run([str(client), "-c", DEPLOY_FROM_ANOTHER_PYTHON], cwd=ROOT,
                                  capture_output=True, text=True, timeout=180)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert '"output":3.5,"default":false' in deployed.stdout
    finally:
        run([clipper, "stop", "--cluster-name=cross"], tmp_path)
    assert_nothing_left(clipper_state_dir)
