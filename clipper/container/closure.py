"""Load a deployed Python closure and call it on batches shaped as Clipper's container does.

Batch shapes (docs/protocol.md, 5.5): a 2-D numpy array (one row per input)
when all inputs have the same length, else a 1-D object array of 1-D arrays; strings are a
1-D object array of ``bytes``; bytes inputs are signed int8. So Clipper predict functions
run unchanged.
"""
import functools
import os
import reprlib
import sys
from collections.abc import Mapping, Set as AbstractSet
from typing import Callable, List, Sequence

import cloudpickle
import numpy as np

from clipper.container.frameworks import load_model_args, read_metadata
from clipper.datatypes import InputType

FUNCTION_FILE = "func.pkl"
MODULES_DIR = "modules"
# Iterable, but not a list of outputs: a str, bytes or dict returned for a batch was split
# into characters or keys (one str for one input: "7" was answered, "42" was 2 outputs).
NOT_OUTPUT_LISTS = (str, bytes, bytearray, memoryview, Mapping, AbstractSet)


def load_function(model_path: str) -> Callable:
    """Unpickle ``<model_path>/func.pkl``; ``<model_path>/modules`` is importable, as in Clipper.

    For a framework model, its model is loaded here, once, and bound before the batch
    argument, so the result is always called as ``function(batch)``."""
    modules = os.path.join(model_path, MODULES_DIR)
    if os.path.isdir(modules):
        # First: a version pinned in pkgs_to_install wins over the interpreter's own (a
        # module this process has already imported, numpy or cloudpickle, stays as it is).
        sys.path.insert(0, modules)
    with open(os.path.join(model_path, FUNCTION_FILE), "rb") as f:
        function = cloudpickle.load(f)
    model_args = load_model_args(model_path, read_metadata(model_path))
    return functools.partial(function, *model_args) if model_args else function


def with_modules(function: Callable, modules: dict) -> Callable:
    """What a function pickled with modules of the user's loads as (clipper_admin's
    serialize_object): the modules, shipped by value, are put in sys.modules under their
    names (unless a module of that name is already loaded), so that an import statement in
    the function's body finds them here too, where the user's files are not."""
    for name in sorted(modules):               # a package before its submodules
        module = sys.modules.setdefault(name, modules[name])
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and not hasattr(sys.modules[parent], child):
            setattr(sys.modules[parent], child, module)
    return function


def missing_module_hint(error: ImportError) -> str:
    """What to do when the model cannot be loaded for a module it cannot import: here we
    cannot tell a module of the user's from a package."""
    name = getattr(error, "name", None)
    module = f"'{name}'" if name else "the module"
    return (f"{module} is a module of your own, or a package: a module of your own is shipped "
            f"with the function when the function, or a module of yours it uses, imports it "
            f"(not by a computed name, as importlib.import_module(name)) from a file outside "
            f"site-packages; a package: deploy it with pkgs_to_install=[...]")


def shape_batch(input_type: InputType, inputs: Sequence[bytes]):
    if input_type is InputType.STRINGS:
        batch = np.empty(len(inputs), dtype=object)
        batch[:] = list(inputs)
        return batch
    dtype = np.dtype(input_type.numpy_dtype)
    if not inputs:
        return np.empty((0, 0), dtype=dtype)
    size = len(inputs[0])
    if len({len(item) for item in inputs}) == 1 and size % dtype.itemsize == 0:
        # Each input copied once, straight into its row: 64 inputs of 200 doubles 9 us and
        # of 3072 floats 29 us, where an array per input, stacked, took 58 and 89 us.
        batch = np.empty((len(inputs), size // dtype.itemsize), dtype=dtype)
        if size:
            rows = memoryview(batch).cast("B")
            for index, item in enumerate(inputs):
                rows[index * size:(index + 1) * size] = item
        return batch
    batch = np.empty(len(inputs), dtype=object)
    batch[:] = [np.frombuffer(item, dtype=dtype) for item in inputs]
    return batch


def run_batch(function: Callable, input_type: InputType, inputs: Sequence[bytes]) -> List[bytes]:
    """Call the model once; each output is str()-ed and UTF-8 encoded, as Clipper does. The
    runtime checks that there is one output per input, whatever the handler."""
    outputs = function(shape_batch(input_type, inputs))
    try:
        if isinstance(outputs, NOT_OUTPUT_LISTS):
            raise TypeError
        outputs = list(outputs)
    except TypeError:
        raise TypeError(f"the model returned {type(outputs).__name__} {reprlib.repr(outputs)}, "
                        "not a list with one output per input") from None
    return [str(output).encode("utf-8") for output in outputs]
