"""deployers.tensorflow: a tf.Module and a TF1-style session built here, served over REST."""
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install -r requirements-tensorflow.txt)")

from clipper_admin import ClipperException  # noqa: E402
from clipper_admin.deployers import tensorflow as tf_deployer  # noqa: E402
from deployer_checks import SLO_MICROS, assert_serves  # noqa: E402

INPUTS = np.random.default_rng(5).normal(size=(6, 3)).round(3).tolist()
WEIGHTS = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])


class Affine(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(WEIGHTS, dtype=tf.float64)
        self.b = tf.Variable([0.1, -0.2], dtype=tf.float64)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float64)])
    def __call__(self, x):
        return tf.nn.sigmoid(tf.matmul(x, self.w) + self.b)


def predict(model, inputs):
    return [json.dumps(row) for row in model(tf.constant(np.stack(inputs))).numpy().tolist()]


def test_a_tf_module_is_saved_as_a_savedmodel_and_served(clipper_conn):
    module = Affine()
    tf_deployer.create_endpoint(clipper_conn, "tf-module", "doubles", predict, module,
                                slo_micros=SLO_MICROS)
    assert_serves(clipper_conn, "tf-module", INPUTS, module(tf.constant(INPUTS, tf.float64)).numpy())


def test_a_savedmodel_directory_is_served(clipper_conn, tmp_path):
    module = Affine()
    tf.saved_model.save(module, str(tmp_path / "saved"))
    tf_deployer.create_endpoint(clipper_conn, "tf-saved", "doubles", predict, str(tmp_path / "saved"),
                                slo_micros=SLO_MICROS)
    assert_serves(clipper_conn, "tf-saved", INPUTS, module(tf.constant(INPUTS, tf.float64)).numpy())


def session_predict(sess, inputs):
    # 0.4.1's style: tensors by name in the session's graph.
    preds = sess.run("probabilities:0", feed_dict={"pixels:0": np.stack(inputs)})
    return [json.dumps(row) for row in preds.tolist()]


def tf1_session():
    graph = tf.Graph()
    with graph.as_default():
        pixels = tf.compat.v1.placeholder(tf.float64, [None, 3], name="pixels")
        weights = tf.compat.v1.Variable(WEIGHTS, name="weights")
        tf.nn.softmax(tf.matmul(pixels, weights), name="probabilities")
        initialize = tf.compat.v1.global_variables_initializer()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(initialize)
    return sess


def checkpoint_directory(sess, directory):
    with sess.graph.as_default():       # 0.4.1's integration test: tf.train.Saver().save
        tf.compat.v1.train.Saver().save(sess, str(directory / "model.ckpt"))
    return str(directory)


def tf1_savedmodel_directory(sess, directory):
    with sess.graph.as_default():       # 0.4.1's integration test: SavedModelBuilder
        builder = tf.compat.v1.saved_model.builder.SavedModelBuilder(str(directory / "export"))
        builder.add_meta_graph_and_variables(sess, [tf.compat.v1.saved_model.tag_constants.SERVING])
        builder.save()
    return str(directory / "export")


@pytest.mark.parametrize("form", ["session", "checkpoint directory", "TF1 SavedModel directory"])
def test_tf1_models_are_served_in_a_session(clipper_conn, tmp_path, form):
    sess = tf1_session()
    expected = session_predict(sess, INPUTS)
    model = {"session": lambda: sess,
             "checkpoint directory": lambda: checkpoint_directory(sess, tmp_path),
             "TF1 SavedModel directory": lambda: tf1_savedmodel_directory(sess, tmp_path)}[form]()
    name = "tf1-" + form.split()[0].lower()
    tf_deployer.create_endpoint(clipper_conn, name, "doubles", session_predict, model,
                                slo_micros=SLO_MICROS)
    assert_serves(clipper_conn, name, INPUTS, [json.loads(e) for e in expected])


def test_a_tf1_savedmodel_without_a_serve_tag_is_refused_at_deploy(clipper_conn, tmp_path):
    sess = tf1_session()
    with sess.graph.as_default():
        builder = tf.compat.v1.saved_model.builder.SavedModelBuilder(str(tmp_path / "train-only"))
        builder.add_meta_graph_and_variables(sess, ["train"])
        builder.save()
    with pytest.raises(ClipperException, match="no meta graph tagged 'serve'"):
        tf_deployer.deploy_tensorflow_model(clipper_conn, "train-only", 1, "doubles",
                                            session_predict, str(tmp_path / "train-only"))


def test_a_checkpoint_that_does_not_restore_gets_a_clear_error(clipper_conn, tmp_path):
    checkpoint_directory(tf1_session(), tmp_path)
    (tmp_path / "model.ckpt.index").write_bytes(b"not an index")
    with pytest.raises(ClipperException, match="could not be restored"):
        tf_deployer.deploy_tensorflow_model(clipper_conn, "broken-ckpt", 1, "doubles",
                                            session_predict, str(tmp_path))
    assert "broken-ckpt" not in [m["model_name"] for m in clipper_conn.get_all_models(verbose=True)]


def test_a_frozen_graph_alone_gets_a_clear_error(clipper_conn, tmp_path):
    (tmp_path / "frozen.pb").write_bytes(b"")
    with pytest.raises(ClipperException, match="SavedModel directory"):
        tf_deployer.deploy_tensorflow_model(clipper_conn, "frozen", 1, "doubles", predict,
                                            str(tmp_path / "frozen.pb"))
