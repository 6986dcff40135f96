"""Serialising a Python function (and a framework's model) into a model directory, as
Clipper's deployers do, and deploying that directory."""
import contextlib
import dis
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import pickle
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import types
from pathlib import Path

import cloudpickle

# Which interpreter pickled the function (it must also load it: cloudpickle is not portable
# across Python versions) and, for a framework model, how the replica loads it.
from clipper.container.frameworks import METADATA_FILE
from clipper_admin.container_manager import package_list
from clipper_admin.exceptions import ClipperException, install_hint

logger = logging.getLogger(__name__)

FUNCTION_FILE = "func.pkl"


# Our own packages: a replica always has them (run from a checkout, they lie outside
# site-packages, but they are never the user's).
_PROJECT_PACKAGES = ("clipper", "clipper_admin")


@functools.lru_cache(maxsize=None)
def _installed_roots():
    """Directories whose modules a replica has without being sent them: the standard library
    and installed packages of this Python (and of the Python a venv is made from)."""
    roots = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    with contextlib.suppress(AttributeError):          # old virtualenv's site module
        roots.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        roots.add(site.getusersitepackages())
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        roots.update(os.path.join(prefix, lib) for lib in ("lib", "lib64"))  # /usr/lib/python3/dist-packages
    return tuple(sorted({os.path.realpath(root) + os.sep for root in roots if root}))


def _is_users_own_module(module):
    """A module of the user's: loaded from a file that is neither in the standard library nor
    in an installed package (site-packages, dist-packages), and not one of ours."""
    if not isinstance(module, types.ModuleType) or module.__name__ == "__main__":
        return False
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path or module.__name__.split(".")[0] in _PROJECT_PACKAGES:
        return False
    path = os.path.realpath(path)
    if {"site-packages", "dist-packages"} & set(path.split(os.sep)):
        return False
    return not path.startswith(_installed_roots())


def _codes(code):
    """A code object and those nested in it (its functions, classes, comprehensions)."""
    codes = [code]
    while codes:
        code = codes.pop()
        yield code
        codes.extend(const for const in code.co_consts if isinstance(const, types.CodeType))


def _modules_imported_in(function):
    """The user's modules that the ``import`` statements in the function's body name: they are
    looked up by name when it runs, in the replica. (Each IMPORT_NAME instruction follows the
    loads of its level and its from-list: ``from .pkg import a`` is 1, ("a",), "pkg".)"""
    package = function.__globals__.get("__package__") or ""
    names = set()
    for code in _codes(function.__code__):
        instructions = list(dis.get_instructions(code))
        for index, instruction in enumerate(instructions):
            if instruction.opname != "IMPORT_NAME" or index < 2:
                continue
            level, fromlist = instructions[index - 2].argval, instructions[index - 1].argval
            try:
                name = importlib.util.resolve_name("." * level + instruction.argval, package) \
                    if isinstance(level, int) and level > 0 else instruction.argval
            except (ImportError, ValueError):
                continue
            parts = name.split(".")                 # import a.b binds a: both must be there
            names.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
            if isinstance(fromlist, tuple):         # from a import b: b may be a submodule
                names.update(f"{name}.{item}" for item in fromlist if isinstance(item, str))
    return {name: sys.modules[name] for name in names if _is_users_own_module(sys.modules.get(name))}


class _WithModules:
    """Pickles as ``with_modules(function, modules)``: the replica puts these modules (shipped
    by value) in sys.modules before the function runs, so an import in its body finds them."""
    def __init__(self, function, modules):
        self.function, self.modules = function, modules

    def __reduce__(self):
        from clipper.container.closure import with_modules
        return with_modules, (self.function, self.modules)


class _RecordingPickler(cloudpickle.Pickler):
    """cloudpickle's own walk of the object, noting each function it meets on the way."""
    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.functions = []

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType):
            self.functions.append(obj)
        return super().reducer_override(obj)


def _dumps(obj, by_value):
    """cloudpickle ``obj`` with the modules ``by_value`` pickled by value (those the user
    registered stay so); a module of these that a function imports in its body is shipped as
    well (see _WithModules), found by pickling again until no new one turns up."""
    already = cloudpickle.list_registry_pickle_by_value()
    registered = [module for module in by_value if module.__name__ not in already]
    for module in registered:
        cloudpickle.register_pickle_by_value(module)
    try:
        imported = {}
        while True:
            buffer = io.BytesIO()
            pickler = _RecordingPickler(buffer)
            pickler.dump(_WithModules(obj, imported) if imported else obj)
            found = {}
            for function in pickler.functions:
                found.update(_modules_imported_in(function))
            if found.keys() <= imported.keys():
                return buffer.getvalue()
            imported.update(found)
    finally:
        for module in registered:
            with contextlib.suppress(ValueError):
                cloudpickle.unregister_pickle_by_value(module)


def serialize_object(obj):
    """0.4.1's helper: ``obj`` cloudpickled to bytes, with the user's own modules by value.

    A replica runs in another process, whose sys.path lacks the user's script directory:
    every module of the user's (a file outside the standard library and site-packages) is
    registered with cloudpickle by value while ``obj`` is pickled, so the code of those that
    ``obj`` reaches, however (a global, a partial, an attribute of an object), travels with
    it; registering one that is not reached ships nothing. An import by a computed name
    (importlib.import_module(name)) is not seen: import the module by name, or install it
    with pkgs_to_install. Should a module reached hold something that cannot be pickled,
    the function is pickled as before, its own module alone by value, with a warning."""
    users = [module for module in list(sys.modules.values()) if _is_users_own_module(module)]
    try:
        return _dumps(obj, users)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as error:
        own = sys.modules.get(getattr(obj, "__module__", None) or "")  # an instance: its class's
        fallback = [own] if _is_users_own_module(own) else []
        data = _dumps(obj, fallback)        # raises if the object itself cannot be pickled
        logger.warning("Could not pickle the modules of yours that the function uses by value "
                       "(%s: %s); only %s is, and the replica must import the others",
                       type(error).__name__, error, own.__name__ if fallback else "none")
        return data


def save_python_function(name, func):
    """Write ``func`` to ``func.pkl`` in a fresh directory; return the directory."""
    serialization_dir = tempfile.mkdtemp(suffix="clipper")
    with open(os.path.join(serialization_dir, FUNCTION_FILE), "wb") as f:
        f.write(serialize_object(func))
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
            wire = [encode_input(item, kind, in_batch=key == "input_batch") for item in items]
    except (ValueError, InputError, TypeError):
        return "Invalid input type"
    return _run_as_a_replica(func, kind, wire)


def _run_as_a_replica(func, kind, wire):
    """Call ``func`` on the batch in a new process that loads it as a replica does, so that
    what a replica could not load (a module of the user's that was not shipped) fails here
    too, as it would once deployed. (Loaded in this process, the user's modules import.)
    The process costs 0.12 to 0.3 s a call (measured on 2 cores)."""
    with tempfile.TemporaryDirectory(prefix="clipper-test-predict-") as scratch:
        model_dir = save_python_function("test-predict-function", func)
        try:
            from clipper.cluster.supervisor import package_only_path
            packages = package_only_path(Path(scratch) / "packages")     # a replica's import path
            cwd = os.path.join(scratch, "cwd")
            os.mkdir(cwd)                       # empty: the child's sys.path[0]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [packages, env.get("PYTHONPATH")]))
            result_path = os.path.join(scratch, "result.pkl")
            child = subprocess.run(
                [sys.executable, "-m", "clipper.container.trial", model_dir, kind.canonical_name, result_path],
                input=pickle.dumps(list(wire)), cwd=cwd, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
            if not os.path.exists(result_path):
                raise ClipperException(
                    f"The function's process exited with code {child.returncode} before it "
                    f"answered: {child.stderr.decode(errors='replace')[-2000:]}")
            with open(result_path, "rb") as f:
                outcome, *details = cloudpickle.load(f)
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)
    if outcome == "ok":
        return details[0]
    if outcome == "unloaded":
        return "Function does not properly serialize and reload"
    if outcome == "load":
        raise ClipperException(f"A replica could not load this function: {details[0]}")
    error, text = details
    if isinstance(error, Exception):
        raise error from ClipperException(f"raised in the replica-like process:\n{text}")
    raise ClipperException(f"The function raised, in a process that runs it as a replica "
                           f"does:\n{text}")
