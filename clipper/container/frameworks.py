"""Load a framework model saved next to the pickled function, once per replica.

A model directory written by one of clipper_admin's framework deployers says in its
metadata which framework saved it (``"framework"``). Each loader below reads that
framework's own files and returns the leading arguments of the user's function, as
Clipper 0.4.1's containers passed them: ``func(model, inputs)``, and for PySpark
``func(spark, model, inputs)``. A replica given GPUs (CUDA_VISIBLE_DEVICES not empty)
loads the model onto the first of them where the framework allows it.
"""
import atexit
import importlib
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Tuple

METADATA_FILE = "clipper_model.json"
PYTORCH_MODEL_FILE = "pytorch_model.pkl"
PYTORCH_WEIGHTS_FILE = "pytorch_weights.pt"
ONNX_MODEL_FILE = "model.onnx"
TENSORFLOW_MODEL_DIR = "tfmodel"
KERAS_MODEL_FILE = "keras_model.keras"
PYSPARK_MODEL_DIR = "pyspark_model_data"

# The Python module a replica imports for each framework (what a missing install names).
MODULES = {"pytorch": "torch", "onnx": "onnxruntime", "tensorflow": "tensorflow",
           "keras": "keras", "pyspark": "pyspark"}


class FrameworkMissing(RuntimeError):
    """The replica's interpreter lacks the framework its model was saved with."""


def read_metadata(model_path: str) -> dict:
    try:
        with open(os.path.join(model_path, METADATA_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def has_gpu() -> bool:
    """Whether this replica was given devices (the backends always set the variable)."""
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())


def load_model_args(model_path: str, metadata: dict) -> Tuple:
    """The arguments that go before the batch in each call of the user's function."""
    framework = metadata.get("framework")
    if not framework:
        return ()
    if framework not in LOADERS:
        raise ValueError(f"this model was saved by an unknown framework deployer: {framework!r}")
    os.environ.update(metadata.get("environment", {}))   # e.g. KERAS_BACKEND, before the import
    try:
        module = importlib.import_module(MODULES[framework])
    except ImportError as error:
        raise FrameworkMissing(
            f"this model needs {MODULES[framework]} ({framework}), which this replica's Python "
            f"cannot import ({error}); install requirements-{framework}.txt there") from None
    return LOADERS[framework](module, model_path, metadata)


def _pytorch(torch, model_path: str, metadata: dict) -> Tuple:
    import cloudpickle
    device = "cuda" if has_gpu() and torch.cuda.is_available() else "cpu"
    with open(os.path.join(model_path, PYTORCH_MODEL_FILE), "rb") as f:
        model = cloudpickle.load(f)
    weights = torch.load(os.path.join(model_path, PYTORCH_WEIGHTS_FILE), map_location=device,
                         weights_only=True)
    model.load_state_dict(weights)
    return (model.to(device).eval(),)


class OnnxModel:
    """An ONNX model in onnxruntime, with Caffe2's ``run`` so 0.4.1 predict functions work:
    ``run(array)``, ``run([arrays])`` or ``run({name: array})`` returns the list of outputs.
    As Caffe2 did, an array whose rank is not its input's, by leading dimensions of size 1,
    is taken without them, or with them (0.4.1's test fed a (1, 784) batch to a model traced
    on a (784,) example). The onnxruntime session is ``.session``."""

    def __init__(self, session):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.ranks = {i.name: len(i.shape) for i in session.get_inputs()}

    def run(self, inputs):
        if isinstance(inputs, dict):
            feed = inputs
        else:
            arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            feed = dict(zip(self.input_names, arrays))
        return self.session.run(None, {name: self._ranked(name, array) for name, array in feed.items()})

    def _ranked(self, name, array):
        rank, shape = self.ranks.get(name), getattr(array, "shape", None)
        if rank is None or shape is None or len(shape) == rank:
            return array
        extra = len(shape) - rank
        if extra > 0 and all(dimension == 1 for dimension in shape[:extra]):
            return array.reshape(shape[extra:])
        if extra < 0:
            return array.reshape((1,) * -extra + shape)
        return array            # onnxruntime's error names the shape it expects


def _onnx(onnxruntime, model_path: str, metadata: dict) -> Tuple:
    providers = ["CPUExecutionProvider"]
    if has_gpu() and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(os.path.join(model_path, ONNX_MODEL_FILE),
                                           providers=providers)
    return (OnnxModel(session),)


def _tensorflow(tf, model_path: str, metadata: dict) -> Tuple:
    """A SavedModel loads with ``tf.saved_model.load``; a TF1 one (from a session, a
    checkpoint or SavedModelBuilder) into a ``tf.compat.v1.Session``, which the function
    gets (as in 0.4.1)."""
    directory = os.path.join(model_path, TENSORFLOW_MODEL_DIR)
    if not metadata.get("session"):
        return (tf.saved_model.load(directory),)
    session = tf.compat.v1.Session(graph=tf.Graph())
    with session.graph.as_default():
        tf.compat.v1.saved_model.loader.load(session, [tf.compat.v1.saved_model.SERVING], directory)
    return (session,)


def _keras(keras, model_path: str, metadata: dict) -> Tuple:
    return (keras.saving.load_model(os.path.join(model_path, metadata.get("model_file", KERAS_MODEL_FILE))),)


def _pyspark(pyspark, model_path: str, metadata: dict) -> Tuple:
    """A local SparkSession on loopback (no UI), and the saved model loaded with its class."""
    from pyspark.sql import SparkSession
    # Spark's JVM puts its scratch (spark-*, blockmgr-*, native libraries) in /tmp whatever
    # TMPDIR says, and a replica stopped or killed with it left them there: one directory
    # of the replica's instead, under TMPDIR, removed when it exits.
    scratch = tempfile.mkdtemp(prefix="clipper-spark-")
    atexit.register(shutil.rmtree, scratch, True)
    spark = (SparkSession.builder.appName("clipper-pyspark").master("local[1]")
             .config("spark.ui.enabled", "false")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.local.dir", scratch)
             .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={scratch}")
             .getOrCreate())
    module_name, class_name = metadata["model_class"].rsplit(".", 1)
    model_class = getattr(importlib.import_module(module_name), class_name)
    saved = os.path.join(model_path, PYSPARK_MODEL_DIR)
    import pyspark.ml
    if issubclass(model_class, (pyspark.ml.PipelineModel, pyspark.ml.Model)):
        model = model_class.load(saved)
    else:                                   # pyspark.mllib: load(sc, path)
        model = model_class.load(spark.sparkContext, saved)
    return (spark, model)


LOADERS: Dict[str, Callable[..., Tuple]] = {
    "pytorch": _pytorch, "onnx": _onnx, "tensorflow": _tensorflow, "keras": _keras,
    "pyspark": _pyspark}
