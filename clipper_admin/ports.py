"""Checking, before a cluster starts, that the ports it needs are free."""
import socket

from clipper_admin.exceptions import ClipperException, stop_command


def port_taken(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: connections in TIME_WAIT do not make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def require_free_ports(host, ports, taken_error=ClipperException):
    """``ports``: ``[(role, port), ...]``; one clear error for the first that cannot be used
    (of type ``taken_error`` when the port is taken, by another process or by another of
    ``ports``: as the engine's error was in 0.4.1, so a retry with new ports catches both)."""
    roles_of_port = {}
    for role, port in ports:
        if not 0 < port < 65536:
            raise ClipperException(f"Port {port} ({role}) is not a valid TCP port")
        if port in roles_of_port:
            raise taken_error(f"Port {port} is given to both the {roles_of_port[port]} and the {role}: "
                              "each needs a port of its own")
        roles_of_port[port] = role
        if port_taken(host, port):
            raise taken_error(
                f"Port {port} ({role}) is already in use on {host}. Give this cluster ports of its "
                "own (clipper_query_port, clipper_management_port, clipper_rpc_port, "
                "clipper_metric_port of its container manager), or stop whatever uses it, e.g. "
                f"another Clipper cluster with: {stop_command()}")
