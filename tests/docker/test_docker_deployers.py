"""A framework model on the Docker backend: the model image installs the framework (here
onnxruntime, at the client's version) and serves the model. Needs a Docker engine, and
PyPI from inside the image build."""
import json

import numpy as np
import pytest
import requests

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -r requirements-onnx.txt)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -r requirements-onnx.txt)")

from onnx import TensorProto, helper  # noqa: E402

from clipper_admin import ClipperConnection, DockerContainerManager  # noqa: E402
from clipper_admin.deployers import onnx as onnx_deployer  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]
PORTS = dict(clipper_query_port=32337, clipper_management_port=32338, clipper_rpc_port=19100,
             clipper_metric_port=32390, redis_port=18380)
WEIGHTS = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)


def doubled_matmul():
    """y = x @ WEIGHTS, built with onnx.helper (no exporter needed)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], WEIGHTS.flatten().tolist())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def predict(model, inputs):
    return [json.dumps(row.tolist()) for row in model.run(np.stack(inputs).astype(np.float32))[0]]


@pytest.fixture(scope="module")
def cluster(docker_client, base_image):
    conn = ClipperConnection(DockerContainerManager(cluster_name="dock-onnx", base_image=base_image, **PORTS))
    conn.start_clipper()
    try:
        yield conn
    finally:
        conn.stop_all(graceful=False)
        for image in ("dock-onnx-dock-onnx-model:1",):
            try:
                docker_client.images.remove(image, force=True)
            except Exception:
                pass


def test_an_onnx_model_image_gets_onnxruntime_and_serves(cluster):
    cluster.register_application("dock-onnx", "floats", "None", 20_000_000)
    onnx_deployer.deploy_onnx_model(cluster, "dock-onnx-model", 1, "floats", predict, doubled_matmul())
    cluster.link_model_to_app("dock-onnx", "dock-onnx-model")
    inputs = [[1.0, 2.0], [-1.0, 0.5]]
    response = requests.post(f"http://{cluster.get_query_addr()}/dock-onnx/predict",
                             json={"input_batch": inputs}, timeout=60)
    assert response.status_code == 200, response.text
    outputs = [answer["output"] for answer in response.json()["batch_predictions"]]
    np.testing.assert_allclose(outputs, np.array(inputs, dtype=np.float32) @ WEIGHTS, rtol=1e-6)
