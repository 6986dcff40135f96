"""Clipper's container-side Python API, the ``rpc`` module of its container images:
``ModelContainerBase`` and ``RPCService``. A model container written for Clipper (a class with
``predict_<input type>`` methods, started with ``rpc.RPCService().start(model)``) runs on our
runtime unchanged: the same CLIPPER_* variables configure it, it serves a Clipper query
frontend or ours over RPC v3, and a model that raises on a batch answers those queries with
its error and goes on serving (Clipper's container exited).

``import rpc`` as Clipper's images offered it: put ``RPC_IMPORT_DIR`` (this package's
``clipper_rpc`` directory) on ``PYTHONPATH``; the Docker backend's runtime image has it as
``/container/rpc.py``, where Clipper's images kept theirs.
"""
import contextlib
import logging
import os
import sys
from pathlib import Path

from clipper.config import DEFAULT_HOST, RPC_PORT, Config
from clipper.datatypes import InputType

__all__ = ["ModelContainerBase", "RPCService", "string_to_input_type", "INPUT_TYPE_BYTES", "INPUT_TYPE_INTS",
           "INPUT_TYPE_FLOATS", "INPUT_TYPE_DOUBLES", "INPUT_TYPE_STRINGS"]

READY_FILE = "/model_is_ready.check"
RPC_IMPORT_DIR = str(Path(__file__).resolve().parent / "clipper_rpc")
# The model's method for each input type.
PREDICT_METHODS = {InputType.BYTES: "predict_bytes", InputType.INTS: "predict_ints",
                   InputType.FLOATS: "predict_floats", InputType.DOUBLES: "predict_doubles",
                   InputType.STRINGS: "predict_strings"}
# Clipper's codes of the input types (its framework containers keep string_to_input_type's).
INPUT_TYPE_BYTES, INPUT_TYPE_INTS, INPUT_TYPE_FLOATS, INPUT_TYPE_DOUBLES, INPUT_TYPE_STRINGS = map(int, InputType)


def string_to_input_type(input_str):
    """The code of an input type's name, in any case and with spaces around it as Clipper's
    containers took CLIPPER_INPUT_TYPE; -1 for a name that is none."""
    try:
        return int(InputType.parse(str(input_str).strip().lower()))
    except ValueError:
        return -1


class ModelContainerBase(object):
    """A model: the method of the container's input type is called with each batch (a 2-D
    numpy array when the inputs have one length, an array of arrays otherwise; bytes for
    strings) and returns one output per input, sent as ``str()`` of it."""

    def predict_ints(self, inputs):
        pass

    def predict_floats(self, inputs):
        pass

    def predict_doubles(self, inputs):
        pass

    def predict_bytes(self, inputs):
        pass

    def predict_strings(self, inputs):
        pass


class RPCService(object):
    """Connects a model to the query frontend named by CLIPPER_IP and CLIPPER_PORT (default
    127.0.0.1:7000) as CLIPPER_MODEL_NAME:CLIPPER_MODEL_VERSION, taking CLIPPER_INPUT_TYPE
    (default doubles). As in Clipper, ``start`` serves what the attributes say: with
    ``read_config=False`` they are set by hand first; the other settings of our runtime
    (its workers, socket, keys, metrics) come from the environment either way."""

    def __init__(self, collect_metrics=True, read_config=True):
        self.collect_metrics = collect_metrics
        self.server = None
        self.model_name = self.model_version = self.model_path = None
        self.host, self.port, self.input_type = DEFAULT_HOST, RPC_PORT, "doubles"
        if read_config:
            self._read_config_from_environment()

    def _read_config_from_environment(self):
        config = Config.load([])
        missing = [name for name, value in (("CLIPPER_MODEL_NAME", config.model_name),
                                            ("CLIPPER_MODEL_VERSION", config.model_version)) if not value]
        if missing:
            _fail(f"{' and '.join(missing)} must be set")
        self.model_name = config.model_name
        self.model_version = config.model_version
        self.host = config.ip
        self.port = config.port
        self.input_type = config.input_type
        self.model_path = config.model_path or None

    def get_model_path(self):
        return self.model_path

    def get_input_type(self):
        return self.input_type

    def start(self, model):
        """Serve ``model`` until SIGTERM (Ctrl-C: KeyboardInterrupt)."""
        from clipper.container.closure import run_batch
        from clipper.container.runtime import replica_metrics, serve_model
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if not self.model_name or self.model_version in (None, ""):
            _fail("the model's name and version must be set (CLIPPER_MODEL_NAME, CLIPPER_MODEL_VERSION)")
        code = string_to_input_type(self.input_type)
        if code == -1:
            _fail(f"{self.input_type!r} is not an input type: use bytes, ints, floats, doubles or strings")
        input_type = InputType(code)
        predict = getattr(model, PREDICT_METHODS[input_type], None)
        if predict is None:
            _fail(f"the model has no {PREDICT_METHODS[input_type]} method, which serves input type "
                  f"{input_type.canonical_name}")
        config = Config.load([]).replace(model_name=str(self.model_name), model_version=str(self.model_version),
                                         ip=self.host, port=int(self.port), input_type=input_type.canonical_name)
        metrics = replica_metrics(config) if self.collect_metrics else None
        _mark_ready()
        serve_model(config, input_type, lambda kind, inputs: run_batch(predict, kind, inputs), metrics)


def _mark_ready():
    """Clipper's containers wrote READY_FILE once their model was loaded: its images'
    HEALTHCHECK tested it. Only inside a container: elsewhere / is the host's."""
    if os.path.exists("/.dockerenv"):
        with contextlib.suppress(OSError):
            Path(READY_FILE).write_text("READY")


def _fail(message):
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(1)
