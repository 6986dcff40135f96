"""The ``clipper`` command: start, inspect and stop clusters from a shell.

    clipper start  [--backend local|docker|ray] [--cluster-name NAME] [--query-port N] [--query-workers N] ...
    clipper status [--backend ...] [--cluster-name NAME]
    clipper recover [--backend ...] [--cluster-name NAME]   (after a crash or a reboot)
    clipper stop   [--backend ...] [--cluster-name NAME]    (as closeClipper.py: all, or those named)

The same ClipperConnection calls a script would make; a cluster started here outlives the
command, as Clipper's did.
"""
import argparse
import json
import sys

from clipper_admin.backends import BACKENDS, chosen_backend, manager_for, stop_all_clusters, stopped_report
from clipper_admin.clipper_admin import ClipperConnection
from clipper_admin.exceptions import ClipperException
from clipper_admin.local import LocalContainerManager


def _parser():
    parser = argparse.ArgumentParser(prog="clipper", description="Start, inspect and stop Clipper clusters.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "start a cluster and leave it running"),
                       ("status", "what a running cluster serves"),
                       ("recover", "start a cluster that crashed (or whose machine restarted) "
                                   "again, as it was, from its state"),
                       ("stop", "stop clusters: every one, or those of --backend and/or --cluster-name")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--backend", choices=list(BACKENDS),
                             help="every backend's clusters" if name == "stop" else "default: $CLIPPER_BACKEND, else local")
        command.add_argument("--cluster-name", default=None if name == "stop" else "default-cluster")
        if name == "start":
            for port, default in (("query", 1337), ("management", 1338), ("rpc", 7000)):
                command.add_argument(f"--{port}-port", type=int, default=default)
            command.add_argument("--metric-port", type=int, default=None,
                                 help="Prometheus metrics (default: the query port + 53)")
            command.add_argument("--cache-size", type=int, default=33554432,
                                 help="prediction cache in bytes; 0 turns it off")
            command.add_argument("--query-workers", type=int, default=1,
                                 help="query frontend processes sharing the query port (local backend); "
                                      "worker k takes the RPC port rpc-port + k")
    return parser


def _ports(args):
    return {"clipper_query_port": args.query_port, "clipper_management_port": args.management_port,
            "clipper_rpc_port": args.rpc_port, "clipper_metric_port": args.metric_port}


def start(args):
    workers = {}
    if args.query_workers != 1:
        if args.backend != "local":
            raise ClipperException(f"--query-workers: only the local backend runs several query "
                                   f"frontend processes, not the {args.backend} backend")
        workers = {"query_workers": args.query_workers}
    conn = ClipperConnection(manager_for(args.backend, cluster_name=args.cluster_name, **_ports(args),
                                         **workers))
    conn.start_clipper(cache_size=args.cache_size)
    print(f"Cluster '{args.cluster_name}' is running: predictions at http://{conn.get_query_addr()}"
          f"/<application>/predict, management at http://{conn.cm.get_admin_addr()}")


def recover(args):
    manager = manager_for(args.backend, cluster_name=args.cluster_name)
    if isinstance(manager, LocalContainerManager) and not manager.crashed() and not manager.cluster.is_running():
        why = ("it is being stopped" if manager.cluster.is_stopping()
               else "no state of it is left (it was stopped, or never started)")
        raise ClipperException(f"Cluster '{args.cluster_name}' has nothing to recover: {why}. "
                               f"`clipper start --cluster-name {args.cluster_name}` starts a new one.")
    conn = _connected(manager, args)     # a crashed local cluster is started again from its state
    print(f"Cluster '{args.cluster_name}' is running: predictions at http://{conn.get_query_addr()}"
          f"/<application>/predict, management at http://{conn.cm.get_admin_addr()}")


def _connected(manager, args):
    """A connection to the named cluster; when the local backend has none of that name, the
    error says where else it may run (the backend is not guessed: a look starts nothing)."""
    conn = ClipperConnection(manager)
    try:
        conn.connect()
    except ClipperException as error:
        if args.backend != "local" or not error.msg.startswith("No running Clipper cluster"):
            raise
        raise ClipperException(f"{error.msg} A cluster on Docker or Ray: --backend docker or "
                               "--backend ray (or CLIPPER_BACKEND).") from None
    return conn


def status(args):
    manager = manager_for(args.backend, cluster_name=args.cluster_name)
    if isinstance(manager, LocalContainerManager) and manager.crashed():   # a look starts nothing
        raise ClipperException(f"Cluster '{args.cluster_name}' is not running: it crashed, or the machine "
                               f"restarted. `clipper recover --cluster-name {args.cluster_name}` starts "
                               "it again as it was.")
    conn = _connected(manager, args)
    print(json.dumps({"cluster": args.cluster_name, "backend": args.backend,
                      "query_address": conn.get_query_addr(), "management_address": conn.cm.get_admin_addr(),
                      "applications": conn.get_all_apps(verbose=True),
                      "models": conn.get_all_models(verbose=True),
                      "replicas": conn.get_all_model_replicas()}, indent=2))


def stop(args):
    stopped = stop_all_clusters(backend=args.backend, cluster_name=args.cluster_name)
    print(stopped_report(stopped, args.cluster_name))


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "stop":       # stop without --backend: every backend's clusters
        args.backend = chosen_backend(args.backend, parser.error)
    try:
        {"start": start, "status": status, "recover": recover, "stop": stop}[args.command](args)
    except ClipperException as error:
        print(f"Error: {error.msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
