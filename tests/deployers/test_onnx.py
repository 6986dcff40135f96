"""deployers.onnx: a PyTorch model exported to ONNX, and an .onnx file, served by onnxruntime."""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -r requirements-pytorch.txt)")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -r requirements-onnx.txt)")
pytest.importorskip("onnxscript", reason="onnxscript (for torch.onnx.export) is not installed (pip install -r requirements-onnx.txt)")

from clipper_admin import ClipperException  # noqa: E402
from clipper_admin.deployers import onnx as onnx_deployer  # noqa: E402
from deployer_checks import SLO_MICROS, assert_serves  # noqa: E402
from helpers import prediction, predict as post  # noqa: E402


def small_network():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).eval()


def predict(model, inputs):
    # As 0.4.1's predict functions for the Caffe2 backend.
    preds = model.run(np.array(inputs).astype(np.float32))
    return [json.dumps(p.tolist()) for p in preds[0]]


INPUTS = np.random.default_rng(2).normal(size=(7, 5)).round(3).tolist()


def own_outputs(network, inputs):
    with torch.no_grad():
        return network(torch.tensor(inputs, dtype=torch.float32)).tolist()


def test_a_pytorch_model_exported_to_onnx_serves_any_batch_size(clipper_conn):
    network = small_network()
    onnx_deployer.create_pytorch_endpoint(clipper_conn, "onnx-app", "floats",
                                          torch.randn(1, 5), predict, network,
                                          slo_micros=SLO_MICROS, onnx_backend="caffe2")
    assert_serves(clipper_conn, "onnx-app", INPUTS, own_outputs(network, INPUTS))


class FixedShapeNetwork(torch.nn.Module):
    """0.4.1's ONNX integration test's model: traced on one (784,) example, it reshapes to
    a batch of one, so it has no batch dimension to make dynamic."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.net = torch.nn.Linear(16, 2)

    def forward(self, x):      # as 0.4.1's test wrote it: its export has a symbolic size
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        x = x.float()
        if isinstance(x, type(torch.randn(1))):
            x = torch.autograd.Variable(x)
        x = x.view(1, 1, 4, 4)
        batch_size = x.size(0)
        return torch.softmax(self.net(x.view(batch_size, -1)), dim=1)


def test_a_model_of_fixed_shape_is_exported_as_traced_and_fed_as_caffe2_fed_it(clipper_conn):
    network = FixedShapeNetwork().eval()
    onnx_deployer.create_pytorch_endpoint(clipper_conn, "onnx-fixed", "ints", torch.randn(16),
                                          predict, network, slo_micros=SLO_MICROS)
    query = list(range(16))
    answer = prediction(clipper_conn, "onnx-fixed", {"input": query})
    assert not answer["default"], answer
    np.testing.assert_allclose(answer["output"], own_outputs(network, query)[0], rtol=1e-5)
    # One input a call, as traced: queries from many clients at once (adaptive batching would
    # batch them) are computed one by one, not failed.
    queries = [list(range(i, i + 16)) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: post(clipper_conn, "onnx-fixed", {"input": q}), queries))
    assert [a.status_code for a in answers] == [200] * len(queries), [a.text for a in answers][:3]
    for query, answer in zip(queries, answers):
        np.testing.assert_allclose(answer.json()["output"], own_outputs(network, query)[0], rtol=1e-5)


def test_an_onnx_file_is_served_by_onnxruntime(clipper_conn, tmp_path):
    network = small_network()
    path = tmp_path / "exported.onnx"
    torch.onnx.export(network, (torch.randn(2, 5),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    clipper_conn.register_application("onnx-file", "floats", "None", SLO_MICROS)
    onnx_deployer.deploy_onnx_model(clipper_conn, "onnx-file", 1, "floats", predict, str(path))
    clipper_conn.link_model_to_app("onnx-file", "onnx-file")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": np.array(INPUTS, dtype=np.float32)})[0]
    assert_serves(clipper_conn, "onnx-file", INPUTS, expected)


def test_unknown_backend_and_missing_file_are_refused(clipper_conn):
    with pytest.raises(ClipperException, match="'tensorrt' is not supported.*onnxruntime"):
        onnx_deployer.deploy_pytorch_model(clipper_conn, "bad", 1, "floats", torch.randn(1, 5),
                                           predict, small_network(), onnx_backend="tensorrt")
    with pytest.raises(ClipperException, match="path to an .onnx file"):
        onnx_deployer.deploy_onnx_model(clipper_conn, "bad", 1, "floats", predict, "/no/such.onnx")
