"""The real clipper_admin 0.4.1 (Python 3.6, from PyPI) against our management frontend.

Our client registers an application and a model, then real_client_driver.py runs the real
client (in a subprocess, with Python 3.6) against the same cluster, and our client reads
back what the real one left. The venv is built once and cached in ~/.cache/clipper-compat;
skipped, saying why, where Python 3.6 is not installed (pyenv) or PyPI cannot be reached.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from helpers import local_cluster

PORTS = dict(query_port=25337, management_port=25338, rpc_port=25700, metric_port=25390)
VENV = Path.home() / ".cache" / "clipper-compat" / "py36"
DRIVER = Path(__file__).with_name("real_client_driver.py")
CERTS = Path("/etc/ssl/certs/ca-certificates.crt")


def python36():
    if not shutil.which("pyenv"):
        return None
    listed = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout.split()
    version = next((v for v in sorted(listed) if v.startswith("3.6.")), None)
    if version is None:
        return None
    prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True).stdout.strip()
    return Path(prefix) / "bin" / "python"


def pip(*args):
    # --isolated: this machine's pip settings (constraints, extra indexes) are for newer Pythons.
    cert = ["--cert", str(CERTS)] if CERTS.exists() else []
    return subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "--isolated", "install", "-q",
                           *cert, *args], capture_output=True, text=True)


def pypi_unreachable():
    try:
        requests.head("https://pypi.org/simple/clipper-admin/", timeout=10)
    except requests.RequestException as error:
        return str(error)
    return None


@pytest.fixture(scope="session")
def real_client_python():
    ready = VENV / "clipper_admin-0.4.1.ready"
    if not ready.exists():
        interpreter = python36()
        if interpreter is None:
            pytest.skip("Python 3.6 is not installed (pyenv install 3.6.15), so the real "
                        "clipper_admin 0.4.1 cannot run here")
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([str(interpreter), "-m", "venv", str(VENV)], check=True)
        # The venv's pip 18 cannot build clipper_admin's dependencies; the last pip for 3.6 can.
        for step in (["--upgrade", "pip==21.3.1"], ["--prefer-binary", "clipper_admin==0.4.1"]):
            result = pip(*step)
            if result.returncode != 0:
                unreachable = pypi_unreachable()
                if unreachable:
                    pytest.skip(f"PyPI is not reachable ({unreachable}), so clipper_admin 0.4.1 "
                                "cannot be installed for Python 3.6")
                pytest.fail(f"pip install {' '.join(step)} failed: {result.stderr[-1500:]}")
        ready.touch()
    return VENV / "bin" / "python"


@pytest.fixture(scope="module")
def ours():
    with local_cluster(name="compat-real", **PORTS) as conn:
        conn.register_application("ours-app", "ints", "0", 20000)
        conn.register_model("ours-model", "1", "ints", labels=["mine"])
        conn.link_model_to_app("ours-app", "ours-model")
        yield conn


@pytest.fixture(scope="module")
def real(real_client_python, ours):
    """What the real client's calls returned (see real_client_driver.py)."""
    result = subprocess.run([str(real_client_python), str(DRIVER), ours.cm.get_admin_addr(),
                             ours.get_query_addr()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def clipper_error(message):
    """How the real client reports a 400 from the management frontend."""
    return f"Received error status code: 400 and message: {message}"


def test_real_client_reads_what_ours_registered(real):
    assert real["ours_apps"] == ["ours-app"]
    assert real["ours_app_info"] == {"input_type": "integers", "default_output": "0",
                                     "latency_slo_micros": 20000, "name": "ours-app",
                                     "linked_models": ["ours-model"]}
    assert real["ours_model_info"] == {
        "model_name": "ours-model", "model_version": "1", "input_type": "integers",
        "labels": ["mine"], "container_name": "NO_CONTAINER", "model_data_path": "DEPRECATED",
        "is_current_version": True}
    assert real["ours_current_version"] == "1"


def test_real_client_registers_and_lists_applications(real):
    real_app = {"input_type": "doubles", "default_output": "-1.0", "latency_slo_micros": 100000,
                "name": "real-app", "linked_models": ["real-model"]}
    assert real["apps"] == ["ours-app", "real-app"]
    assert real["apps_verbose"] == [real["ours_app_info"], real_app]
    assert real["app_info"] == real_app
    assert real["missing_app_info"] is None
    assert real["linked"] == ["real-model"]


def test_real_client_registers_models(real):
    assert real["models"] == ["ours-model:1", "real-model:1", "real-model:2"]
    containerless, with_image = real["models_verbose"][1:]
    assert containerless == {
        "model_name": "real-model", "model_version": "1", "input_type": "doubles",
        "labels": ["first"], "container_name": "NO_CONTAINER", "model_data_path": "DEPRECATED",
        "is_current_version": False}
    # No labels are stored as Clipper stored them, and read back as one empty label.
    assert with_image == {**containerless, "model_version": "2", "labels": [""],
                          "container_name": "example/real-model:2", "is_current_version": True}
    assert real["model_info"] == with_image
    assert real["missing_model_info"] is None
    assert real["replicas"] == real["replicas_verbose"] == []
    assert real["missing_replica_info"] is None


def test_real_client_inspects_the_query_frontend(real):
    metrics = real["metrics"]
    assert set(metrics) <= {"counters", "ratio_counters", "meters", "histograms"}
    counters = {name: fields for entry in metrics["counters"] for name, fields in entry.items()}
    assert counters["internal:aggregate_num_predictions"] == {"count": "0"}


def test_real_client_gets_clippers_error_messages(real):
    assert real["duplicate_app"] == clipper_error("application 'real-app' already exists")
    assert real["duplicate_model"] == clipper_error(
        "model with name 'real-model' and version '2' already exists")
    assert real["link_unknown"] == clipper_error("No model with name 'no-such-model' exists.")
    assert real["link_wrong_type"] == clipper_error(
        "Model with name 'ours-model' has incompatible input_type 'integers'. "
        "Requested app to link to has input_type 'doubles'.")
    assert real["unknown_version"] == clipper_error(
        "Cannot set non-existent version '9' for model with name 'real-model'")
    assert real["stop_unknown_version"] == clipper_error(
        "model with name 'real-model' and version '9' does not exist")
    assert real["unlink_again"] == clipper_error(
        "Cannot remove nonexistent link between app real-app and model real-model")
    assert real["unregister_missing"] == clipper_error("Application 'doomed-app' does not exist")
    assert real["resize_containerless"] == "Cannot resize the replica set for containerless model real-model:1"


def test_real_client_switches_and_stops_versions(real, ours):
    assert real["current_version"] == "2"            # the last registered version is current
    assert real["current_after_rollback"] == "1"
    assert real["current_after_deploy"] == "3"       # deploy_model registers, as 0.4.1
    assert real["models_after_stop_inactive"] == ["ours-model:1", "real-model:3"]
    assert ours.get_current_model_version("real-model") == "3"
    assert ours.get_model_info("real-model", "3")["container_name"] == "example/real-model:3"
    assert sorted(ours.get_all_models()) == ["ours-model:1", "real-model:3"]


def test_real_client_links_unlinks_and_unregisters(real, ours):
    assert real["linked_after_unlink"] == []
    assert real["apps_after_unregister"] == ["ours-app", "real-app"]
    assert sorted(ours.get_all_apps()) == ["ours-app", "real-app"]
    assert ours.get_linked_models("real-app") == ["real-model"]     # relinked at the end
    assert ours.get_app_info("real-app") == real["app_info"]
