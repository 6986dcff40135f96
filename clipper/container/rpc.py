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
import logging
import sys
from pathlib import Path

from clipper.config import Config
from clipper.datatypes import InputType

__all__ = ["ModelContainerBase", "RPCService"]

RPC_IMPORT_DIR = str(Path(__file__).resolve().parent / "clipper_rpc")
# The model's method for each input type.
PREDICT_METHODS = {InputType.BYTES: "predict_bytes", InputType.INTS: "predict_ints",
                   InputType.FLOATS: "predict_floats", InputType.DOUBLES: "predict_doubles",
                   InputType.STRINGS: "predict_strings"}


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
    (default doubles)."""

    def __init__(self, collect_metrics=True, read_config=True):
        self.collect_metrics = collect_metrics
        self.server = None
        if read_config:
            self._read_config_from_environment()

    def _read_config_from_environment(self):
        self.config = Config.load([])
        missing = [name for name, value in (("CLIPPER_MODEL_NAME", self.config.model_name),
                                            ("CLIPPER_MODEL_VERSION", self.config.model_version)) if not value]
        if missing:
            print(f"ERROR: {' and '.join(missing)} must be set", file=sys.stderr)
            sys.exit(1)
        self.model_name = self.config.model_name
        self.model_version = self.config.model_version
        self.host = self.config.ip
        self.port = self.config.port
        self.input_type = self.config.input_type
        self.model_path = self.config.model_path or None

    def get_model_path(self):
        return self.model_path

    def get_input_type(self):
        return self.input_type

    def start(self, model):
        """Serve ``model`` until SIGTERM (Ctrl-C: KeyboardInterrupt)."""
        from clipper.container.closure import run_batch
        from clipper.container.runtime import replica_metrics, serve_model
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        input_type = InputType.parse(self.input_type)
        predict = getattr(model, PREDICT_METHODS[input_type])
        metrics = replica_metrics(self.config) if self.collect_metrics else None
        serve_model(self.config, input_type, lambda kind, inputs: run_batch(predict, kind, inputs), metrics)
