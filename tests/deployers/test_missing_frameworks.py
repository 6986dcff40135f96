"""Without its framework, a deployer says what to install (no ImportError traceback);
MXNet's deployer says it is retired and points to ONNX. No framework needs to be installed."""
import subprocess
import sys

import pytest

from clipper.container.frameworks import FrameworkMissing, load_model_args
from clipper_admin import ClipperException
from clipper_admin.deployers import mxnet as mxnet_deployer

# deployer module, function, the module hidden, the requirements file named
DEPLOYERS = [
    ("pytorch", "deploy_pytorch_model", "torch", "requirements-pytorch.txt"),
    ("onnx", "deploy_onnx_model", "onnx", "requirements-onnx.txt"),
    ("tensorflow", "deploy_tensorflow_model", "tensorflow", "requirements-tensorflow.txt"),
    ("keras", "deploy_keras_model", "keras", "requirements-keras.txt"),
    ("pyspark", "deploy_pyspark_model", "pyspark", "requirements-pyspark.txt"),
]

CALL_WITHOUT = """
import sys
sys.modules[{hidden!r}] = None          # as if it were not installed
from clipper_admin import ClipperException
from clipper_admin.deployers import {module}
arguments = [None, "m", 1, "doubles", lambda *a: a, object()] + ([None] if {module!r} == "pyspark" else [])
try:
    {module}.{function}(*arguments)
except ClipperException as error:
    print("ClipperException:", error)
"""


@pytest.mark.parametrize("module, function, hidden, requirements", DEPLOYERS)
def test_a_missing_framework_names_what_to_install(module, function, hidden, requirements):
    result = subprocess.run([sys.executable, "-c", CALL_WITHOUT.format(**locals())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("ClipperException: ")
    assert f"pip install -r {requirements}" in result.stdout
    assert f"<the path or URL it came from>[{module}]" in result.stdout     # not on PyPI: no name there


def test_a_replica_without_the_framework_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(FrameworkMissing, match="needs torch .*requirements-pytorch.txt"):
        load_model_args(str(tmp_path), {"framework": "pytorch"})


@pytest.mark.parametrize("call", [
    lambda: mxnet_deployer.deploy_mxnet_model(None, "m", 1, "doubles", print, object(), [("data", (1, 2))]),
    lambda: mxnet_deployer.create_endpoint(None, "m", "doubles", print, object(), [("data", (1, 2))]),
])
def test_mxnet_is_retired_and_points_to_onnx(call):
    with pytest.raises(ClipperException, match="MXNet is retired.*deploy_onnx_model"):
        call()

