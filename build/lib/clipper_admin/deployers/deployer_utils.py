"""Serialising a Python function into a model directory, as Clipper's deployers do."""
import contextlib
import json
import logging
import os
import sys
import sysconfig
import tempfile

import cloudpickle

logger = logging.getLogger(__name__)

FUNCTION_FILE = "func.pkl"
# Which interpreter pickled the function: it must also load it (cloudpickle is not portable
# across Python versions).
METADATA_FILE = "clipper_model.json"


def _is_users_own_module(module):
    """A module of the user's (not the standard library, not an installed package)."""
    path = getattr(module, "__file__", None)
    if module is None or module.__name__ == "__main__" or not path:
        return False
    installed = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(os.path.abspath(path).startswith(os.path.abspath(p) + os.sep) for p in installed)


@contextlib.contextmanager
def _pickled_by_value(func):
    """cloudpickle stores functions of importable modules by reference, and the container
    cannot import the user's own files: ship such a module's code with the function."""
    module = sys.modules.get(getattr(func, "__module__", None) or "")
    by_value = _is_users_own_module(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def save_python_function(name, func):
    """Write ``func`` to ``func.pkl`` in a fresh directory; return the directory."""
    serialization_dir = tempfile.mkdtemp(suffix="clipper")
    with open(os.path.join(serialization_dir, FUNCTION_FILE), "wb") as f, _pickled_by_value(func):
        cloudpickle.dump(func, f)
    with open(os.path.join(serialization_dir, METADATA_FILE), "w") as f:
        json.dump({"python": sys.executable,
                   "python_version": "%d.%d" % sys.version_info[:2],
                   "cloudpickle": cloudpickle.__version__}, f)
    logger.info("Saved function {name} to {path}".format(name=name, path=serialization_dir))
    return serialization_dir


def read_model_metadata(model_dir):
    try:
        with open(os.path.join(model_dir, METADATA_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def run_locally(query, func, input_type):
    """What ClipperConnection.test_predict_function returns, with 0.4.1's error strings."""
    from clipper.container.closure import shape_batch
    from clipper.datatypes import InputType
    from clipper.rest.inputs import InputError, encode_input

    key, values = next(iter(query.items())) if isinstance(query, dict) and query else (None, None)
    if key not in ("input", "input_batch"):
        return "Invalid input type or JSON key"
    items = values if key == "input_batch" else [values]
    try:
        kind = InputType.parse(input_type)
        if kind is InputType.BYTES:   # the query holds raw bytes here, not base64 text
            if not all(isinstance(item, bytes) for item in items):
                return "Invalid input type"
            wire = list(items)
        else:
            wire = [encode_input(item, kind, key) for item in items]
    except (ValueError, InputError, TypeError):
        return "Invalid input type"
    reloaded = cloudpickle.loads(cloudpickle.dumps(func))
    if not reloaded:
        return "Function does not properly serialize and reload"
    return reloaded(shape_batch(kind, wire))
