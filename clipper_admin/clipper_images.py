"""Clipper's own model images, served where no image runs (the local and Ray backends).

Clipper's tests and benchmarks deploy its noop container, ``<registry>/noop-container:<tag>``,
as a base image for ``build_model`` or as an image for ``deploy_model``. Its behaviour is
known (every input answered "1.0"), so it is served as a model directory of our own.
"""
import re

from clipper.container import noop
from clipper_admin.deployers.deployer_utils import save_python_function

_NOOP_IMAGE = re.compile(r"(?:[^\s]*/)?noop-container(?::[\w.-]+)?\Z")


def is_noop_image(image) -> bool:
    return isinstance(image, str) and _NOOP_IMAGE.match(image) is not None


def noop_model_directory() -> str:
    """A fresh model directory that serves the noop container's answers (the caller removes it)."""
    return save_python_function("noop-container", noop.predict)
