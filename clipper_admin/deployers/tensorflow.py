"""Deploy a function with a TensorFlow model, as clipper_admin 0.4.1's ``deployers.tensorflow``.

For TensorFlow 2: ``tf_sess_or_saved_model_path`` is a SavedModel directory, a
``tf.Module`` or a Keras model (exported as a SavedModel); each replica loads it once with
``tf.saved_model.load`` and calls ``func(model, inputs)`` per batch (a Keras model's
export is called as ``model.serve(x)``). 0.4.1's other form, a TF1 session, works through
``tf.compat.v1``: a ``tf.compat.v1.Session`` is saved as a TF1 SavedModel, each replica
loads it into a session and calls ``func(sess, inputs)`` (tensors by name, as in 0.4.1).
TF1 checkpoint directories and frozen graphs are refused with what to pass instead.
"""
import logging
import os
import shutil

from clipper.container.frameworks import TENSORFLOW_MODEL_DIR
from clipper_admin.deployers.deployer_utils import (
    deploy_model_directory, import_framework, pinned_requirements)
from clipper_admin.exceptions import ClipperException

logger = logging.getLogger(__name__)

def create_endpoint(clipper_conn, name, input_type, func, tf_sess_or_saved_model_path,
                    default_output="None", version=1, slo_micros=3000000, labels=None,
                    registry=None, base_image="default", num_replicas=1, batch_size=-1,
                    pkgs_to_install=None, num_gpus=0):
    """Register an application ``name``, deploy the model as model ``name`` and link them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_tensorflow_model(clipper_conn, name, version, input_type, func,
                            tf_sess_or_saved_model_path, base_image, labels, registry,
                            num_replicas, batch_size, pkgs_to_install, num_gpus)
    clipper_conn.link_model_to_app(name, name)


def deploy_tensorflow_model(clipper_conn, name, version, input_type, func,
                            tf_sess_or_saved_model_path, base_image="default", labels=None,
                            registry=None, num_replicas=1, batch_size=-1, pkgs_to_install=None,
                            num_gpus=0):
    """Deploy ``func(model, inputs)`` with a SavedModel (path or object), or
    ``func(sess, inputs)`` with a TF1 session or checkpoint directory."""
    tf = import_framework("tensorflow", "tensorflow", "deploy_tensorflow_model")
    model = tf_sess_or_saved_model_path
    save = _saver(tf, model)

    def save_model(directory):
        save(os.path.join(directory, TENSORFLOW_MODEL_DIR))
        return {"session": isinstance(model, tf.compat.v1.Session),
                "packages": pinned_requirements("tensorflow")}

    deploy_model_directory(clipper_conn, name, version, input_type, func, base_image, labels,
                           registry, num_replicas, batch_size, pkgs_to_install, num_gpus,
                           framework="tensorflow", save_model=save_model)
    logger.info("TensorFlow model deployed")


def _saver(tf, model):
    """How to write ``model`` into a directory, or a ClipperException saying what to pass."""
    if isinstance(model, tf.compat.v1.Session):
        def save_session(target):
            with model.graph.as_default():
                builder = tf.compat.v1.saved_model.Builder(target)
                builder.add_meta_graph_and_variables(model, [tf.compat.v1.saved_model.SERVING])
                builder.save()
        return save_session
    if _is_keras_model(model):
        return lambda target: model.export(target, verbose=False)
    if isinstance(model, tf.Module):
        return lambda target: tf.saved_model.save(model, target)
    path = str(model)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return lambda target: shutil.copytree(path, target)
    raise ClipperException(
        f"{model!r} is not a TensorFlow model this deployer can save. Pass a SavedModel directory "
        "(tf.saved_model.save(module, path), or model.export(path) for Keras), a tf.Module, a "
        "Keras model or a tf.compat.v1.Session. A TF1 checkpoint or frozen graph: restore it "
        "into a tf.compat.v1.Session and pass the session")


def _is_keras_model(model):
    try:
        import keras
    except ImportError:
        return False
    return isinstance(model, keras.Model)
