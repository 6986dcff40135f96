"""clipper_admin 0.4.1's public API for a modern, Clipper-compatible cluster (Python 3.9+)."""
from clipper_admin.version import __registry__, __version__
from clipper_admin.exceptions import ClipperException, UnconnectedException
from clipper_admin.container_manager import ContainerManager
from clipper_admin.clipper_admin import ClipperConnection
from clipper_admin.local import LocalContainerManager
from clipper_admin.docker import DockerContainerManager
from clipper_admin.ray import RayContainerManager
from clipper_admin.backends import backend_from_args, stop_all_clusters

__all__ = ["ClipperConnection", "ContainerManager", "LocalContainerManager",
           "DockerContainerManager", "RayContainerManager",
           "ClipperException", "UnconnectedException",
           "backend_from_args", "stop_all_clusters", "__version__", "__registry__"]
