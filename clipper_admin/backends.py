"""The backends the example scripts know, in one place: how to choose one and how to stop
what each left running."""
import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from clipper_admin.docker import DockerContainerManager, stop_all_docker_clusters
from clipper_admin.exceptions import ClipperException
from clipper_admin.local import LocalContainerManager, stop_all_local_clusters


@dataclass(frozen=True)
class Backend:
    manager: Callable                 # its ContainerManager class
    stop_clusters: Callable           # (graceful, names) -> [(cluster name, count stopped)]
    stopped: str                      # how closeClipper.py names what it stopped, "... cluster 'x' (3 {unit})"
    unit: str
    using: str                        # the line a script prints when it starts


BACKENDS: Dict[str, Backend] = {
    "local": Backend(LocalContainerManager, stop_all_local_clusters, "cluster", "processes",
                     "Using the local backend (processes on this machine; "
                     "--backend docker or CLIPPER_BACKEND=docker for Docker)"),
    "docker": Backend(DockerContainerManager, stop_all_docker_clusters, "Docker cluster", "containers",
                      "Using the Docker backend (containers on the local Docker engine)"),
}


def backend_from_args(argv=None, description=None, **manager_kwargs):
    """The ContainerManager the user asked for: ``--backend``, else $CLIPPER_BACKEND, else local.

    ``--help`` and bad arguments (or a $CLIPPER_BACKEND that names no backend) end the
    script here, before anything starts."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=list(BACKENDS),
                        help="where the cluster runs (default: $CLIPPER_BACKEND, else local)")
    backend = parser.parse_args(argv).backend or os.environ.get("CLIPPER_BACKEND") or "local"
    if backend not in BACKENDS:
        parser.error(f"CLIPPER_BACKEND={backend!r} is not a backend; use one of: {', '.join(BACKENDS)}")
    _report_clipper_errors_briefly()
    print(BACKENDS[backend].using)
    return BACKENDS[backend].manager(**manager_kwargs)


def stop_all_clusters(backend: Optional[str] = None, cluster_name: Optional[str] = None,
                      graceful: bool = True) -> List[str]:
    """Stop the Clipper clusters left on this machine: all of them, or those of one backend
    and/or of one name. ``[what was stopped, e.g. "cluster 'x' (5 processes)", ...]``."""
    names = None if cluster_name is None else [cluster_name]
    chosen = BACKENDS if backend is None else {backend: BACKENDS[backend]}
    return [f"{kind.stopped} '{name}' ({count} {kind.unit})"
            for kind in chosen.values() for name, count in kind.stop_clusters(graceful, names)]


def _report_clipper_errors_briefly():
    """In a script, a ClipperException says what to do; its traceback only hides that."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, ClipperException):
            print(f"Error: {value.msg}", file=sys.stderr)
        else:
            previous(kind, value, traceback)
    sys.excepthook = hook
