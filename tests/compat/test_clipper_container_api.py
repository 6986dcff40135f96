"""Model containers written for Clipper's Python ``rpc`` module (``rpc.ModelContainerBase``,
``rpc.RPCService().start(model)``, configured by Clipper's CLIPPER_* variables) run on our
runtime unchanged, as scripts that ``import rpc``, against a cluster of ours over TCP."""
import os
import subprocess
import sys
import time

import pytest

from clipper.cluster.cluster_dir import MARKER_ENV
from clipper.container.rpc import RPC_IMPORT_DIR
from helpers import ROOT, local_cluster, predict, prediction

PORTS = dict(query_port=25437, management_port=25438, rpc_port=25710, metric_port=25490)

CONTAINER_SCRIPT = ROOT / "tests" / "compat" / "clipper_sum_container.py"


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="clipper-rpc-api", **PORTS) as conn:
        yield conn


def container_env(clipper_state_dir, **variables):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([RPC_IMPORT_DIR, str(ROOT)]),
            MARKER_ENV: str(clipper_state_dir / "clipper-rpc"), "CLIPPER_IP": "127.0.0.1",
            "CLIPPER_PORT": str(PORTS["rpc_port"]), **variables}


@pytest.fixture
def start_container(cluster, clipper_state_dir):
    """start(name, input_type): app and containerless model ``name``, served by the script."""
    started = []

    def start(name, input_type):
        cluster.register_application(name, input_type, "default", 2_000_000)
        cluster.register_model(name, "1", input_type)
        cluster.link_model_to_app(name, name)
        env = container_env(clipper_state_dir, CLIPPER_MODEL_NAME=name, CLIPPER_MODEL_VERSION="1",
                            CLIPPER_INPUT_TYPE=input_type, CLIPPER_MODEL_PATH="/model")
        process = subprocess.Popen([sys.executable, str(CONTAINER_SCRIPT)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        deadline = time.monotonic() + 20
        while f"{name}:1:0" not in cluster.get_all_model_replicas():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the container did not register"
            time.sleep(0.05)
        return process

    yield start
    for process in started:
        process.terminate()
        assert process.wait(10) == 0, process.stderr.read().decode()[-2000:]


def test_a_clipper_container_script_serves_its_input_types_method(cluster, start_container):
    start_container("rpc-sum", "doubles")
    single = prediction(cluster, "rpc-sum", {"input": [1.0, 2.0, 3.5]})
    assert (single["output"], single["default"]) == (6.5, False)
    batch = prediction(cluster, "rpc-sum", {"input_batch": [[1, 1], [2.5], [0.25, 0.25, 0.5]]})
    assert [answer["output"] for answer in batch["batch_predictions"]] == [2.0, 2.5, 1.0]


def test_the_container_reads_clippers_variables(cluster, start_container):
    start_container("rpc-strings", "strings")
    assert prediction(cluster, "rpc-strings", {"input": "hello"})["output"] == "/model:strings:5"


def test_a_model_that_raises_answers_with_its_error_and_goes_on_serving(cluster, start_container):
    """Clipper's container exited on a model's exception; ours answers those queries with it."""
    process = start_container("rpc-raises", "doubles")
    failed = predict(cluster, "rpc-raises", {"input": []})
    assert "an empty input has no sum here" in failed.text, failed.text
    assert prediction(cluster, "rpc-raises", {"input": [2.0, 2.0]})["output"] == 4.0
    assert process.poll() is None


def test_a_container_without_its_name_says_which_variable_is_missing(clipper_state_dir):
    env = container_env(clipper_state_dir, CLIPPER_MODEL_VERSION="1")
    env.pop("CLIPPER_MODEL_NAME", None)
    result = subprocess.run([sys.executable, str(CONTAINER_SCRIPT)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "CLIPPER_MODEL_NAME must be set" in result.stderr, result.stderr
