"""deployers.keras: a Keras 3 model built and fitted here, as an object and as a .keras file."""
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras is not installed (pip install -r requirements-keras.txt)")

from clipper_admin import ClipperException  # noqa: E402
from clipper_admin.deployers import keras as keras_deployer  # noqa: E402
from deployer_checks import SLO_MICROS, assert_serves  # noqa: E402

INPUTS = np.random.default_rng(4).normal(size=(5, 3)).round(3).tolist()


def fitted_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    features = np.random.default_rng(0).normal(size=(32, 3))
    model.fit(features, features[:, :2] * 2.0, epochs=2, verbose=0)
    return model


def predict(model, inputs):
    return [json.dumps(row) for row in np.asarray(model.predict(np.stack(inputs), verbose=0)).tolist()]


def own_outputs(model):
    return np.asarray(model.predict(np.array(INPUTS), verbose=0))


def test_a_model_object_is_saved_and_served(clipper_conn):
    model = fitted_model()
    keras_deployer.create_endpoint(clipper_conn, "keras-app", "doubles", predict, model,
                                   slo_micros=SLO_MICROS)
    assert_serves(clipper_conn, "keras-app", INPUTS, own_outputs(model))


def test_a_saved_keras_file_is_served(clipper_conn, tmp_path):
    model = fitted_model()
    path = tmp_path / "fitted.keras"
    model.save(path)
    keras_deployer.create_endpoint(clipper_conn, "keras-file", "doubles", predict, str(path),
                                   slo_micros=SLO_MICROS)
    assert_serves(clipper_conn, "keras-file", INPUTS, own_outputs(model))


def test_something_else_is_refused(clipper_conn):
    with pytest.raises(ClipperException, match="either a Keras Model object or a saved model file"):
        keras_deployer.deploy_keras_model(clipper_conn, "nothing", 1, "doubles", predict, "/no/model.h5")
