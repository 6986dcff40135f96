"""Serialising a Python function (and a framework's model) into a model directory, as
Clipper's deployers do, and deploying that directory."""
import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile

import cloudpickle

# Which interpreter pickled the function (it must also load it: cloudpickle is not portable
# across Python versions) and, for a framework model, how the replica loads it.
from clipper.container.frameworks import METADATA_FILE
from clipper_admin.container_manager import package_list
from clipper_admin.exceptions import ClipperException, install_hint

logger = logging.getLogger(__name__)

FUNCTION_FILE = "func.pkl"


def _is_users_own_module(module):
    """A module of the user's (not the standard library, not an installed package)."""
    path = getattr(module, "__file__", None)
    if module is None or module.__name__ == "__main__" or not path:
        return False
    installed = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(os.path.abspath(path).startswith(os.path.abspath(p) + os.sep) for p in installed)


@contextlib.contextmanager
def _pickled_by_value(obj):
    """cloudpickle stores functions and classes of importable modules by reference, and the
    container cannot import the user's own files: ship such a module's code with the object."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")   # an instance: its class's
    by_value = _is_users_own_module(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def serialize_object(obj):
    """0.4.1's helper: ``obj`` cloudpickled to bytes, with the user's own classes by value."""
    with _pickled_by_value(obj):
        return cloudpickle.dumps(obj)


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


def save_object(obj, path):
    """cloudpickle ``obj`` to ``path``, with the user's own classes by value."""
    with open(path, "wb") as f:
        f.write(serialize_object(obj))


def read_model_metadata(model_dir):
    try:
        with open(os.path.join(model_dir, METADATA_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _update_model_metadata(model_dir, **fields):
    metadata = {**read_model_metadata(model_dir), **fields}
    with open(os.path.join(model_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f)


def import_framework(module_name, framework, deployer):
    """Import a framework the deployer needs, or say what to install (no ImportError)."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ClipperException(
            f"{deployer} needs {module_name}, which this Python cannot import ({error}). Install "
            f"it with: {install_hint(framework)}") from None


def pinned_requirements(*module_names):
    """pip requirements for the distributions that provide these modules, at the versions
    installed here (a Docker model image gets the framework the model was saved with)."""
    providers = importlib.metadata.packages_distributions()
    requirements = []
    for module_name in module_names:
        for distribution in providers.get(module_name, []):
            version = importlib.metadata.version(distribution).split("+")[0]   # 2.13.0+cpu
            requirements.append(f"{distribution}=={version}")
    return sorted(set(requirements))


def deploy_model_directory(clipper_conn, name, version, input_type, func, base_image, labels,
                           registry, num_replicas, batch_size, pkgs_to_install, num_gpus,
                           framework=None, save_model=None):
    """Save ``func`` in a fresh model directory and, for a framework model, the model too:
    ``save_model(directory)`` writes it in the framework's own format and returns what the
    replica needs to load it (metadata fields). Then build and deploy the directory."""
    if not callable(func):      # else every query would answer "'int' object is not callable"
        raise ClipperException(f"func must be a function of a batch of inputs (a list) that returns "
                               f"one output per input; got {type(func).__name__} {func!r:.100}")
    pkgs_to_install = package_list(pkgs_to_install)      # refused before the model is saved, not after
    serialization_dir = save_python_function(name, func)
    try:
        if framework:
            try:
                details = save_model(serialization_dir) or {}
            except ClipperException:
                raise
            except Exception as error:
                raise ClipperException(f"Could not save the {framework} model: "
                                       f"{type(error).__name__}: {error}") from error
            _update_model_metadata(serialization_dir, framework=framework, **details)
            logger.info("Saved the %s model of %s", framework, name)
        clipper_conn.build_and_deploy_model(name, version, input_type, serialization_dir,
                                            base_image, labels, registry, num_replicas,
                                            batch_size, pkgs_to_install, num_gpus=num_gpus)
    finally:
        shutil.rmtree(serialization_dir, ignore_errors=True)


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
