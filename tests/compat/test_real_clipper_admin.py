"""The real clipper_admin 0.4.1 (Python 3.6, from PyPI) against our management frontend.

The venv is built once and cached in ~/.cache/clipper-compat. Skipped, saying why, where
Python 3.6 is not installed (pyenv) or PyPI cannot be reached.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import local_cluster

PORTS = dict(query_port=41337, management_port=41338, rpc_port=47000, metric_port=41390)
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
    # --isolated: this machine's pip settings point at wheels for newer Pythons.
    cert = ["--cert", str(CERTS)] if CERTS.exists() else []
    return subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "--isolated", "install", "-q",
                           *cert, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
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
                pytest.skip(f"could not install clipper_admin 0.4.1 for Python 3.6: {result.stderr[-600:]}")
        ready.touch()
    return VENV / "bin" / "python"


@pytest.fixture(scope="module")
def ours():
    with local_cluster(name="compat-real", **PORTS) as conn:
        conn.register_application("ours-app", "ints", "0", 20000)
        yield conn


@pytest.fixture(scope="module")
def real(real_client_python, ours):
    result = subprocess.run([str(real_client_python), str(DRIVER), ours.cm.get_admin_addr(),
                             ours.get_query_addr()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_real_client_sees_what_ours_registered(real):
    assert real["seen_apps"] == ["ours-app"]


def test_real_client_registers_and_lists_applications(real, ours):
    assert real["apps"] == ["ours-app", "real-app"]
    assert real["app_info"] == {"name": "real-app", "input_type": "doubles", "default_output": "-1.0",
                                "latency_slo_micros": 100000, "linked_models": ["real-model"]}
    assert real["missing_app_info"] is None
    assert ours.get_app_info("real-app") == {**real["app_info"], "linked_models": ["real-model"]}
    assert "real-app" in [app["name"] for app in real["apps_verbose"]]


def test_real_client_gets_clippers_error_messages(real):
    assert "real-app" in real["duplicate_app"] and "already exists" in real["duplicate_app"]
    assert "No model with name 'no-such-model' exists." in real["link_unknown"]
    assert "Cannot set non-existent version '9' for model with name 'real-model'" in real["unknown_version"]


def test_real_client_registers_models_and_versions(real, ours):
    assert real["models"] == ["real-model:1", "real-model:2"]
    assert real["model_info"] == {
        "model_name": "real-model", "model_version": "2", "input_type": "doubles",
        "labels": [""], "container_name": "example/real-model:2", "model_data_path": "DEPRECATED",
        "is_current_version": True}
    assert real["current_version"] == "2"            # the last registered version is current
    assert real["current_after_rollback"] == "1"
    assert ours.get_current_model_version("real-model") == "1"
    first, second = real["models_verbose"]          # listed before the rollback
    assert first["labels"] == ["first"] and first["is_current_version"] is False
    assert second["is_current_version"] is True
    assert real["replicas"] == []


def test_real_client_links_and_unlinks(real, ours):
    assert real["linked"] == ["real-model"]
    assert real["linked_after_unlink"] == []
    assert real["apps_after_unregister"] == ["ours-app", "real-app"]
    assert ours.get_linked_models("real-app") == ["real-model"]
