"""Deploy a function with a TensorFlow model, as clipper_admin 0.4.1's ``deployers.tensorflow``.

For TensorFlow 2: ``tf_sess_or_saved_model_path`` is a SavedModel directory, a
``tf.Module`` or a Keras model (exported as a SavedModel); each replica loads it once with
``tf.saved_model.load`` and calls ``func(model, inputs)`` per batch (a Keras model's
export is called as ``model.serve(x)``). 0.4.1's other form, a TF1 session, works through
``tf.compat.v1``: a ``tf.compat.v1.Session``, a TF1 checkpoint directory (``saver.save``'s
files: restored into a session here) and a TF1 SavedModel directory (``SavedModelBuilder``'s)
are each served as a TF1 SavedModel: each replica loads it into a session and calls
``func(sess, inputs)`` (tensors by name, as in 0.4.1). A frozen graph alone is refused with
what to pass instead.
"""
import glob
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
    """Deploy ``func(model, inputs)`` with a TF2 SavedModel (path or object), or
    ``func(sess, inputs)`` with a TF1 session, checkpoint directory or SavedModel directory."""
    tf = import_framework("tensorflow", "tensorflow", "deploy_tensorflow_model")
    save, in_session = _saver(tf, tf_sess_or_saved_model_path)

    def save_model(directory):
        save(os.path.join(directory, TENSORFLOW_MODEL_DIR))
        return {"session": in_session, "packages": pinned_requirements("tensorflow")}

    deploy_model_directory(clipper_conn, name, version, input_type, func, base_image, labels,
                           registry, num_replicas, batch_size, pkgs_to_install, num_gpus,
                           framework="tensorflow", save_model=save_model)
    logger.info("TensorFlow model deployed")


def _saver(tf, model):
    """How to write ``model`` into a directory, and whether replicas serve it in a TF1
    session; or a ClipperException saying what to pass."""
    if isinstance(model, tf.compat.v1.Session):
        return (lambda target: _save_session(tf, model, target)), True
    if _is_keras_model(model):
        return (lambda target: model.export(target, verbose=False)), False
    if isinstance(model, tf.Module):
        return (lambda target: tf.saved_model.save(model, target)), False
    path = str(model)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return (lambda target: shutil.copytree(path, target)), _written_by_tf1(path)
    checkpoint = _checkpoint_prefix(tf, path) if os.path.isdir(path) else None
    if checkpoint is not None:
        return (lambda target: _save_checkpoint(tf, checkpoint, target)), True
    raise ClipperException(
        f"{model!r} is not a TensorFlow model this deployer can save. Pass a SavedModel directory "
        "(tf.saved_model.save(module, path), or model.export(path) for Keras), a tf.Module, a "
        "Keras model, a tf.compat.v1.Session or a TF1 checkpoint directory (saver.save's .meta, "
        ".index and .data files). A frozen graph: import it into a tf.compat.v1.Session and "
        "pass the session")


def _save_session(tf, session, target):
    with session.graph.as_default():
        builder = tf.compat.v1.saved_model.Builder(target)
        builder.add_meta_graph_and_variables(session, [tf.compat.v1.saved_model.SERVING])
        builder.save()


def _written_by_tf1(directory):
    """TF1's SavedModelBuilder writes no object graph; TF2's tf.saved_model.save does. A TF1
    SavedModel is served in a session, as 0.4.1 served it, so its functions run unchanged;
    it is loaded by its "serve" tag, as 0.4.1 loaded it."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(directory, "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    if any(meta_graph.object_graph_def.nodes for meta_graph in saved_model.meta_graphs):
        return False
    tags = [list(meta_graph.meta_info_def.tags) for meta_graph in saved_model.meta_graphs]
    if not any("serve" in graph_tags for graph_tags in tags):
        raise ClipperException(f"The TF1 SavedModel in {directory} has no meta graph tagged 'serve' "
                               f"(its tags: {tags}); save it with tags=[tf.saved_model.SERVING]")
    logger.info("%s is a TF1 SavedModel: served in a tf.compat.v1.Session, func(sess, inputs)", directory)
    return True


def _checkpoint_prefix(tf, directory):
    """The checkpoint of a directory ``saver.save`` wrote to: its latest, else the newest
    ``.meta`` file (0.4.1's container took the first it found). None if there is none."""
    latest = tf.train.latest_checkpoint(directory)
    if latest is not None and os.path.isfile(latest + ".meta"):
        return latest
    metas = glob.glob(os.path.join(glob.escape(directory), "*.meta"))
    return max(metas, key=os.path.getmtime)[:-len(".meta")] if metas else None


def _save_checkpoint(tf, checkpoint, target):
    """Restore a TF1 checkpoint into a session of its own and save that as a SavedModel."""
    with tf.compat.v1.Session(graph=tf.Graph()) as session, session.graph.as_default():
        try:
            saver = tf.compat.v1.train.import_meta_graph(checkpoint + ".meta", clear_devices=True)
            saver.restore(session, checkpoint)
        except Exception as error:
            raise ClipperException(f"The TF1 checkpoint {checkpoint} could not be restored: {error}") from error
        _save_session(tf, session, target)


def _is_keras_model(model):
    try:
        import keras
    except ImportError:
        return False
    return isinstance(model, keras.Model)
