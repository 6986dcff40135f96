"""deployers.pytorch: a small network trained here, served through 0.4.1's calls."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -r requirements-pytorch.txt)")

from clipper_admin import ClipperException  # noqa: E402
from clipper_admin.deployers import pytorch as pytorch_deployer  # noqa: E402
from deployer_checks import SLO_MICROS, assert_serves  # noqa: E402


class TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=1)


def trained_model():
    torch.manual_seed(0)
    model = TinyClassifier()
    features = torch.randn(64, 4)
    labels = (features[:, 0] > 0).long() + (features[:, 1] > 0).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.nll_loss(torch.log(model(features)), labels).backward()
        optimizer.step()
    return model.eval()


def predict(model, inputs):
    device = next(model.parameters()).device
    with torch.no_grad():
        probabilities = model(torch.tensor(np.stack(inputs), dtype=torch.float32, device=device))
    return [json.dumps(row) for row in probabilities.cpu().tolist()]


def own_outputs(model, inputs):
    with torch.no_grad():
        return model(torch.tensor(inputs, dtype=torch.float32)).tolist()


INPUTS = np.random.default_rng(1).normal(size=(6, 4)).round(3).tolist()


def test_create_endpoint_serves_the_models_own_outputs(clipper_conn):
    model = trained_model()
    pytorch_deployer.create_endpoint(clipper_conn, "torch-app", "doubles", predict, model,
                                     slo_micros=SLO_MICROS)
    assert_serves(clipper_conn, "torch-app", INPUTS, own_outputs(model, INPUTS))


def test_a_new_version_serves_its_own_weights_and_rolls_back(clipper_conn):
    first, second = trained_model(), trained_model()
    with torch.no_grad():
        second.out.bias += 5.0                 # another model, same architecture
    clipper_conn.register_application("torch-versions", "doubles", "None", SLO_MICROS)
    pytorch_deployer.deploy_pytorch_model(clipper_conn, "torch-versions", 1, "doubles", predict, first)
    clipper_conn.link_model_to_app("torch-versions", "torch-versions")
    pytorch_deployer.deploy_pytorch_model(clipper_conn, "torch-versions", 2, "doubles", predict, second,
                                          num_replicas=2, batch_size=4)
    assert_serves(clipper_conn, "torch-versions", INPUTS, own_outputs(second, INPUTS))
    clipper_conn.set_model_version("torch-versions", "1")
    assert_serves(clipper_conn, "torch-versions", INPUTS, own_outputs(first, INPUTS))


def test_something_that_is_not_a_module_is_refused(clipper_conn):
    with pytest.raises(ClipperException, match="must be a torch.nn.Module"):
        pytorch_deployer.deploy_pytorch_model(clipper_conn, "not-a-model", 1, "doubles", predict,
                                              {"weights": [1.0]})
