"""The backends, in one place: how a script chooses one, and how to stop what each left running.

Each is imported only when used, so a backend whose SDK is not installed (Docker) costs
nothing until it is asked for.
"""
import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

from clipper_admin.exceptions import ClipperException, MissingDependency


@dataclass(frozen=True)
class Backend:
    module: str             # where its ContainerManager and its stop-every-cluster function live
    manager: str            # its ContainerManager, a name clipper_admin exports
    # function (graceful, names, *, required) -> [(cluster name, count stopped)]; ``required``:
    # this backend was asked for by name, so where it cannot look, it says so (ClipperException)
    stop_clusters: str
    stopped: str            # closeClipper.py prints "Stopped Clipper <stopped> 'x' (3 <unit>)"
    unit: str
    using: str              # the line a script prints when it starts
    extra: Optional[str] = None     # the optional requirements its SDK comes with (requirements-<extra>.txt)


BACKENDS: Dict[str, Backend] = {
    "local": Backend("clipper_admin.local", "LocalContainerManager", "stop_all_local_clusters",
                     "cluster", "processes",
                     "Using the local backend (processes on this machine; "
                     "--backend docker or CLIPPER_BACKEND=docker for Docker)"),
    "docker": Backend("clipper_admin.docker", "DockerContainerManager", "stop_all_docker_clusters",
                      "Docker cluster", "containers",
                      "Using the Docker backend (containers on the local Docker engine)", "docker"),
    "ray": Backend("clipper_admin.ray", "RayContainerManager", "stop_all_ray_clusters",
                   "Ray cluster", "actors",
                   "Using the Ray backend (the Ray cluster at $RAY_ADDRESS, else the one on this machine)", "ray"),
}


def backend_from_args(argv=None, description=None, **manager_kwargs):
    """The ContainerManager the user asked for: ``--backend``, else $CLIPPER_BACKEND, else local.

    ``--help`` and bad arguments (or a $CLIPPER_BACKEND that names no backend) end the
    script here, before anything starts."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=list(BACKENDS),
                        help="where the cluster runs (default: $CLIPPER_BACKEND, else local)")
    backend = chosen_backend(parser.parse_args(argv).backend, parser.error)
    _report_clipper_errors_briefly()
    manager = manager_for(backend, **manager_kwargs)
    print(BACKENDS[backend].using)
    return manager


def chosen_backend(flag, error):
    """``--backend``'s value, else $CLIPPER_BACKEND, else local; ``error(message)`` (which
    ends the command) for a $CLIPPER_BACKEND that names no backend."""
    backend = flag or os.environ.get("CLIPPER_BACKEND") or "local"
    if backend not in BACKENDS:
        error(f"CLIPPER_BACKEND={backend!r} is not a backend; use one of: {', '.join(BACKENDS)}")
    return backend


def manager_for(backend, **manager_kwargs):
    """A ContainerManager of the named backend (MissingDependency if its SDK is not installed)."""
    import clipper_admin
    return getattr(clipper_admin, BACKENDS[backend].manager)(**manager_kwargs)


def stop_all_clusters(backend: Optional[str] = None, cluster_name: Optional[str] = None,
                      graceful: bool = True) -> List[str]:
    """Stop the Clipper clusters left on this machine: all of them, or those of one backend
    and/or of one name. ``[what was stopped, e.g. "cluster 'x' (5 processes)", ...]``."""
    names = None if cluster_name is None else [cluster_name]
    stopped = []
    for kind in (BACKENDS.values() if backend is None else [BACKENDS[backend]]):
        try:
            module = importlib.import_module(kind.module)
        except ModuleNotFoundError as error:
            if (error.name or "").startswith("clipper") or kind.extra is None:
                raise
            if backend is not None:  # asked for: say what to install rather than "nothing runs"
                raise MissingDependency(f"Stopping {kind.manager}'s clusters",
                                        (error.name or kind.extra).split(".")[0], kind.extra) from error
            continue                 # its SDK is not installed: no cluster of it was started from here
        stop_clusters = getattr(module, kind.stop_clusters)
        stopped += [f"{kind.stopped} '{name}' ({count} {kind.unit})"
                    for name, count in stop_clusters(graceful, names, required=backend is not None)]
    return stopped


def stopped_report(stopped: List[str], cluster_name: Optional[str] = None) -> str:
    """What closeClipper.py and `clipper stop` print: what stop_all_clusters stopped."""
    if stopped:
        return "\n".join(f"Stopped Clipper {what}" for what in stopped)
    if cluster_name is None:
        return "No Clipper cluster is running."
    return f"No Clipper cluster named '{cluster_name}' is running."


def _report_clipper_errors_briefly():
    """In a script, a ClipperException says what to do; its traceback only hides that."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, ClipperException):
            print(f"Error: {value.msg}", file=sys.stderr)
        else:
            previous(kind, value, traceback)
    sys.excepthook = hook
