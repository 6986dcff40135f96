"""clipper_admin 0.4.1's public API for a modern, Clipper-compatible cluster (Python 3.9+).

``__all__`` lists the names clipper_admin 0.4.1 exported, then ours.
Backends that need an optional SDK (Docker, Ray) are imported on first use, so that
``import clipper_admin`` stays light and works without them.
"""
import importlib

from clipper_admin.version import __registry__, __version__
from clipper_admin.exceptions import ClipperException, MissingDependency, UnconnectedException
from clipper_admin.container_manager import CONTAINERLESS_MODEL_IMAGE, ClusterAdapter, ContainerManager
from clipper_admin.clipper_admin import (
    CLIPPER_TEMP_DIR, DEFAULT_LABEL, DEFAULT_PREDICTION_CACHE_SIZE_BYTES, ClipperConnection)
from clipper_admin.local import LocalContainerManager
from clipper_admin.kubernetes import KubernetesContainerManager
from clipper_admin.backends import backend_from_args, stop_all_clusters

__all__ = [
    # clipper_admin 0.4.1's names
    "ClipperConnection", "DockerContainerManager", "KubernetesContainerManager", "ClipperException",
    "UnconnectedException", "CLIPPER_TEMP_DIR", "DEFAULT_LABEL", "DEFAULT_PREDICTION_CACHE_SIZE_BYTES",
    "CONTAINERLESS_MODEL_IMAGE", "ClusterAdapter", "deployers", "__version__",
    # ours
    "ContainerManager", "LocalContainerManager", "RayContainerManager", "MissingDependency", "backend_from_args",
    "stop_all_clusters", "__registry__",
]

# name -> (module that defines it, the extra it needs), imported when the name is first used
_ON_FIRST_USE = {
    "DockerContainerManager": ("clipper_admin.docker", "docker"),
    "RayContainerManager": ("clipper_admin.ray", "ray"),
    "deployers": ("clipper_admin.deployers", None),
}


def __getattr__(name):
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'clipper_admin' has no attribute '{name}'")
    module_name, extra = _ON_FIRST_USE[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if extra is None or (error.name or "").startswith("clipper"):
            raise
        raise MissingDependency(name, error.name.split(".")[0], extra) from None
    value = module if module.__name__.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
