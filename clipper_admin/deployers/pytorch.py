"""Deploy a function with a PyTorch model, as clipper_admin 0.4.1's ``deployers.pytorch``.

The model is saved as its weights (``torch.save`` of the state dict) plus its pickled
module, loaded once per replica (``load_state_dict``, eval mode; onto the replica's GPU
when it was given one), and ``func(model, inputs)`` is called per batch.
"""
import logging
import os

from clipper.container.frameworks import PYTORCH_MODEL_FILE, PYTORCH_WEIGHTS_FILE
from clipper_admin.deployers.deployer_utils import (
    deploy_model_directory, import_framework, pinned_requirements, save_object)
from clipper_admin.exceptions import ClipperException

logger = logging.getLogger(__name__)


def create_endpoint(clipper_conn, name, input_type, func, pytorch_model, default_output="None",
                    version=1, slo_micros=3000000, labels=None, registry=None,
                    base_image="default", num_replicas=1, batch_size=-1, pkgs_to_install=None,
                    num_gpus=0):
    """Register an application ``name``, deploy the model as model ``name`` and link them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_pytorch_model(clipper_conn, name, version, input_type, func, pytorch_model,
                         base_image, labels, registry, num_replicas, batch_size,
                         pkgs_to_install, num_gpus)
    clipper_conn.link_model_to_app(name, name)


def deploy_pytorch_model(clipper_conn, name, version, input_type, func, pytorch_model,
                         base_image="default", labels=None, registry=None, num_replicas=1,
                         batch_size=-1, pkgs_to_install=None, num_gpus=0):
    """Deploy ``func(model, inputs)`` with ``pytorch_model`` (a ``torch.nn.Module``).

    In a replica given GPUs (``num_gpus``, ours) the model is on ``cuda``: move the inputs
    to ``next(model.parameters()).device``."""
    torch = import_framework("torch", "pytorch", "deploy_pytorch_model")
    if not isinstance(pytorch_model, torch.nn.Module):
        raise ClipperException(f"pytorch_model must be a torch.nn.Module, not {type(pytorch_model).__name__}")

    def save_model(directory):
        torch.save(pytorch_model.state_dict(), os.path.join(directory, PYTORCH_WEIGHTS_FILE))
        save_object(pytorch_model, os.path.join(directory, PYTORCH_MODEL_FILE))
        return {"packages": pinned_requirements("torch")}

    deploy_model_directory(clipper_conn, name, version, input_type, func, base_image, labels,
                           registry, num_replicas, batch_size, pkgs_to_install, num_gpus,
                           framework="pytorch", save_model=save_model)
    logger.info("PyTorch model deployed")
