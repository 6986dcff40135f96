"""Model containers written for Clipper's Python ``rpc`` module (``rpc.ModelContainerBase``,
``rpc.RPCService().start(model)``, configured by Clipper's CLIPPER_* variables) run on our
runtime unchanged, as scripts that ``import rpc``, against a cluster of ours over TCP."""
import os
import subprocess
import sys
import time

import pytest

from clipper.cluster.cluster_dir import MARKER_ENV
from clipper.container import rpc
from clipper.container.rpc import RPC_IMPORT_DIR
from helpers import ROOT, local_cluster, predict, prediction

PORTS = dict(query_port=25437, management_port=25438, rpc_port=25710, metric_port=25490)

CONTAINER_SCRIPT = ROOT / "tests" / "compat" / "clipper_sum_container.py"


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="clipper-rpc-api", **PORTS) as conn:
        yield conn


def container_env(clipper_state_dir, **variables):
    """The container's environment: ``variables`` added, those given as None left out."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([RPC_IMPORT_DIR, str(ROOT)]),
           MARKER_ENV: str(clipper_state_dir / "clipper-rpc"), "CLIPPER_IP": "127.0.0.1",
           "CLIPPER_PORT": str(PORTS["rpc_port"]), **variables}
    return {name: value for name, value in env.items() if value is not None}


@pytest.fixture
def start_container(cluster, clipper_state_dir):
    """start(name, input_type, *arguments, **variables): app and containerless model ``name``,
    served by the script (given ``arguments``; ``variables`` change its environment)."""
    started = []

    def start(name, input_type, *arguments, **variables):
        cluster.register_application(name, input_type, "default", 2_000_000)
        cluster.register_model(name, "1", input_type)
        cluster.link_model_to_app(name, name)
        env = container_env(clipper_state_dir, **{"CLIPPER_MODEL_NAME": name, "CLIPPER_MODEL_VERSION": "1",
                                                  "CLIPPER_INPUT_TYPE": input_type,
                                                  "CLIPPER_MODEL_PATH": "/model", **variables})
        process = subprocess.Popen([sys.executable, str(CONTAINER_SCRIPT), *arguments], env=env,
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
    assert prediction(cluster, "rpc-strings", {"input": "hello"})["output"] == "/model:strings:4:5"


def test_clippers_spellings_of_an_input_type_are_taken(cluster, start_container):
    """Clipper's containers took CLIPPER_INPUT_TYPE in any case, spaces around it."""
    assert [rpc.string_to_input_type(name) for name in ("b", "Ints", " float ", "D", "strs", "matrix")] == \
        [rpc.INPUT_TYPE_BYTES, rpc.INPUT_TYPE_INTS, rpc.INPUT_TYPE_FLOATS, rpc.INPUT_TYPE_DOUBLES,
         rpc.INPUT_TYPE_STRINGS, -1] == [0, 1, 2, 3, 4, -1]
    start_container("rpc-spelled", "doubles", CLIPPER_INPUT_TYPE=" Double ")
    assert prediction(cluster, "rpc-spelled", {"input": [1.0, 2.0]})["output"] == 3.0


def test_a_service_configured_by_hand_serves_what_its_attributes_say(cluster, start_container):
    """RPCService(read_config=False), its attributes set before start(), as Clipper allowed:
    no CLIPPER_* variable names the model."""
    start_container("rpc-by-hand", "doubles", "--by-hand", "rpc-by-hand", str(PORTS["rpc_port"]),
                    CLIPPER_MODEL_NAME=None, CLIPPER_MODEL_VERSION=None, CLIPPER_PORT=None, CLIPPER_IP=None,
                    CLIPPER_INPUT_TYPE=None)
    assert prediction(cluster, "rpc-by-hand", {"input": [1.0, 2.5]})["output"] == 3.5


def test_a_model_that_raises_answers_with_its_error_and_goes_on_serving(cluster, start_container):
    """Clipper's container exited on a model's exception; ours answers those queries with it."""
    process = start_container("rpc-raises", "doubles")
    failed = predict(cluster, "rpc-raises", {"input": []})
    assert "an empty input has no sum here" in failed.text, failed.text
    assert prediction(cluster, "rpc-raises", {"input": [2.0, 2.0]})["output"] == 4.0
    assert process.poll() is None


MODEL_WITHOUT_METHODS = "import rpc; rpc.RPCService().start(object())"


@pytest.mark.parametrize("command, variables, error", [
    ([str(CONTAINER_SCRIPT)], dict(CLIPPER_MODEL_NAME=None), "CLIPPER_MODEL_NAME must be set"),
    ([str(CONTAINER_SCRIPT)], dict(CLIPPER_INPUT_TYPE="matrix"), "'matrix' is not an input type"),
    (["-c", MODEL_WITHOUT_METHODS], {}, "the model has no predict_doubles method"),
], ids=["no name", "no such input type", "no method for it"])
def test_a_container_that_cannot_serve_is_exit_1_saying_why(clipper_state_dir, command, variables, error):
    env = container_env(clipper_state_dir, **{"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1", **variables})
    result = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "ERROR: " + error in result.stderr, result.stderr
