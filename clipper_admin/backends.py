"""Choosing a backend for the example scripts: --backend, else $CLIPPER_BACKEND, else local."""
import argparse
import os
import sys

from clipper_admin.exceptions import ClipperException

BACKENDS = ("local", "docker")


def backend_from_args(argv=None, **manager_kwargs):
    """The ContainerManager the user asked for on the command line or in the environment."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--backend", choices=BACKENDS,
                        default=os.environ.get("CLIPPER_BACKEND") or "local")
    backend = parser.parse_known_args(argv)[0].backend
    _report_clipper_errors_briefly()
    manager = manager_for(backend, **manager_kwargs)
    if backend == "docker":
        print("Using the Docker backend (containers on the local Docker engine)")
    else:
        print("Using the local backend (processes on this machine; "
              "--backend docker or CLIPPER_BACKEND=docker for Docker)")
    return manager


def manager_for(backend, **manager_kwargs):
    """A ContainerManager of the named backend."""
    if backend == "docker":
        from clipper_admin import DockerContainerManager
        return DockerContainerManager(**manager_kwargs)
    from clipper_admin.local import LocalContainerManager
    return LocalContainerManager(**manager_kwargs)


def stop_all_clusters():
    """Stop every Clipper cluster left on this machine, local or on a Docker engine that
    answers; ``[(what was stopped, e.g. "cluster 'x' (5 processes)"), ...]``."""
    from clipper_admin.local import stop_all_local_clusters
    stopped = [f"cluster '{name}' ({count} processes)" for name, count in stop_all_local_clusters()]
    try:
        from clipper_admin.docker import stop_all_docker_clusters
    except ModuleNotFoundError:      # no Docker SDK here: no Docker cluster was started from here
        return stopped
    return stopped + [f"Docker cluster '{name}' ({count} containers)"
                      for name, count in stop_all_docker_clusters()]


def _report_clipper_errors_briefly():
    """In a script, a ClipperException says what to do; its traceback only hides that."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, ClipperException):
            print(f"Error: {value.msg}", file=sys.stderr)
        else:
            previous(kind, value, traceback)
    sys.excepthook = hook
