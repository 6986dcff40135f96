"""One call of a saved model function, in a process that loads it as a replica does
(clipper_admin's test_predict_function): what a replica could not load (a module of the
user's that was not shipped) fails here too.

    python -m clipper.container.trial MODEL_DIR INPUT_TYPE RESULT_FILE   (the wire inputs pickled on stdin)

RESULT_FILE gets, pickled, ("ok", outputs), ("load", why), ("unloaded",) or ("raised",
exception or None, traceback). What the model prints goes to stderr.
"""
import pickle
import sys
import traceback
from collections.abc import Iterator

import cloudpickle

from clipper.container.closure import load_function, missing_module_hint, shape_batch
from clipper.datatypes import InputType


def main(model_path: str, input_type: str, result_path: str) -> None:
    wire = pickle.load(sys.stdin.buffer)
    sys.stdout = sys.stderr

    def answer(*result):
        with open(result_path, "wb") as f:
            f.write(cloudpickle.dumps(result))

    try:
        function = load_function(model_path)
    except ImportError as error:
        return answer("load", f"cannot load the model: {error} ({missing_module_hint(error)})")
    except BaseException as error:
        return answer("load", f"cannot load the model: {type(error).__name__}: {error}")
    if not function:
        return answer("unloaded")
    try:
        outputs = function(shape_batch(InputType.parse(input_type), wire))
        if isinstance(outputs, Iterator):     # a generator: what a replica would send of it
            outputs = list(outputs)
    except BaseException as error:
        text = traceback.format_exc()
        try:
            return answer("raised", error, text)
        except Exception:               # an exception that cannot be pickled: its text
            return answer("raised", None, text)
    try:
        answer("ok", outputs)
    except Exception as error:
        answer("raised", None, f"the outputs cannot be pickled: {type(error).__name__}: {error}")


if __name__ == "__main__":
    main(*sys.argv[1:])
