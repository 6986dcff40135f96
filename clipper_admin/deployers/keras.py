"""Deploy a function with a Keras model, as clipper_admin 0.4.1's ``deployers.keras``.

For Keras 3, on whichever backend is installed (TensorFlow, PyTorch or JAX): the model is
saved in Keras's own format (``.keras``; a given ``.h5`` file is kept as it is), loaded
once per replica with ``keras.saving.load_model`` under the backend it was saved with, and
``func(model, inputs)`` is called per batch.
"""
import logging
import os
import shutil

from clipper.container.frameworks import KERAS_MODEL_FILE
from clipper_admin.deployers.deployer_utils import (
    deploy_model_directory, import_framework, pinned_requirements)
from clipper_admin.exceptions import ClipperException

logger = logging.getLogger(__name__)

# The Python module behind each Keras backend (what a Docker model image must install).
BACKEND_MODULES = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}


def create_endpoint(clipper_conn, name, input_type, func, model_path_or_object,
                    default_output="None", version=1, slo_micros=3000000, labels=None,
                    registry=None, base_image="default", num_replicas=1, batch_size=-1,
                    pkgs_to_install=None, num_gpus=0):
    """Register an application ``name``, deploy the model as model ``name`` and link them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_keras_model(clipper_conn, name, version, input_type, func, model_path_or_object,
                       base_image, labels, registry, num_replicas, batch_size, pkgs_to_install,
                       num_gpus)
    clipper_conn.link_model_to_app(name, name)


def deploy_keras_model(clipper_conn, name, version, input_type, func, model_path_or_object,
                       base_image="default", labels=None, registry=None, num_replicas=1,
                       batch_size=-1, pkgs_to_install=None, num_gpus=0):
    """Deploy ``func(model, inputs)`` with a Keras model object or a saved model file
    (``.keras``, or a legacy ``.h5``)."""
    keras = import_framework("keras", "keras", "deploy_keras_model")
    is_model = isinstance(model_path_or_object, keras.Model)
    if not is_model and not (isinstance(model_path_or_object, (str, os.PathLike))
                             and os.path.isfile(model_path_or_object)
                             and str(model_path_or_object).endswith((".keras", ".h5"))):
        raise ClipperException(f"{model_path_or_object!r} should be either a Keras Model object or "
                               "a saved model file ('.keras' or '.h5')")
    backend = keras.backend.backend()

    def save_model(directory):
        if is_model:
            model_file = KERAS_MODEL_FILE
            model_path_or_object.save(os.path.join(directory, model_file))
        else:
            model_file = "keras_model" + os.path.splitext(str(model_path_or_object))[1]
            shutil.copyfile(model_path_or_object, os.path.join(directory, model_file))
        modules = ["keras"] + ([BACKEND_MODULES[backend]] if backend in BACKEND_MODULES else [])
        return {"model_file": model_file, "environment": {"KERAS_BACKEND": backend},
                "packages": pinned_requirements(*modules)}

    deploy_model_directory(clipper_conn, name, version, input_type, func, base_image, labels,
                           registry, num_replicas, batch_size, pkgs_to_install, num_gpus,
                           framework="keras", save_model=save_model)
    logger.info("Keras model deployed (backend %s)", backend)
