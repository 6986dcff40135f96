"""Loading a deployed closure and calling it on a batch: what it returns must be a list of
outputs, and the packages installed for it (pkgs_to_install) come first."""
import struct
import sys

import cloudpickle
import numpy as np
import pytest

from clipper.container.closure import load_function, run_batch
from clipper.datatypes import InputType

DOUBLES = InputType.DOUBLES


def doubles(*values):
    return [struct.pack("<d", value) for value in values]


@pytest.mark.parametrize("model, returned", [
    # One str for the batch: "7" was answered 7, "42" was "2 outputs for 1 inputs".
    (lambda xs: str(int(xs[0][0])), "str '42'"),
    (lambda xs: b"42", "bytes b'42'"),
    (lambda xs: {"a": 1}, "dict {'a': 1}"),
    (lambda xs: 42.0, "float 42.0"),
])
def test_a_model_that_returns_no_list_of_outputs_is_refused_naming_what_it_returned(model, returned):
    with pytest.raises(TypeError, match=f"the model returned {returned}, not a list with one output per input"):
        run_batch(model, DOUBLES, doubles(42.0))
    with pytest.raises(TypeError):
        run_batch(model, DOUBLES, doubles(4.0, 2.0))     # 2 inputs, 2 characters: no better


@pytest.mark.parametrize("model", [
    lambda xs: [x[0] for x in xs], lambda xs: tuple(x[0] for x in xs), lambda xs: xs[:, 0],
    lambda xs: (x[0] for x in xs)])
def test_lists_tuples_arrays_and_other_iterables_of_outputs_are_outputs(model):
    assert run_batch(model, DOUBLES, doubles(1.5, 2.0)) == [b"1.5", b"2.0"]


def test_packages_installed_for_the_model_come_before_the_interpreters(tmp_path, monkeypatch):
    """pip --target put pkgs_to_install into the model's modules/, appended to sys.path: a
    package the interpreter also had (site-packages) won, and a pinned version was ignored."""
    site = tmp_path / "site-packages"
    model = tmp_path / "model"
    for where, version in ((site, "site"), (model / "modules", "pinned")):
        package = where / "clipper_test_pinned_pkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"__version__ = {version!r}\n")

    def predict(xs):
        import clipper_test_pinned_pkg
        return [clipper_test_pinned_pkg.__version__ for _ in xs]

    with open(model / "func.pkl", "wb") as f:
        cloudpickle.dump(predict, f)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    monkeypatch.delitem(sys.modules, "clipper_test_pinned_pkg", raising=False)
    try:
        assert run_batch(load_function(str(model)), DOUBLES, doubles(1.0)) == [b"pinned"]
    finally:
        sys.modules.pop("clipper_test_pinned_pkg", None)
