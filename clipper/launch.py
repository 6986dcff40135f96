"""The launch recipe of every role of a cluster, shared by all backends.

For each role (Redis, the two frontends, a model replica) this module says how it is started
(``python -m clipper <role>`` with the role's CLIPPER_* environment from one ``Config``), how
readiness is checked, and how long it may take to stop. The local supervisor, the Docker
backend and the Ray backend only differ in *where* they run the command.
"""
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence
from urllib.parse import urlparse

from clipper.config import (
    MANAGEMENT_FRONTEND, MODEL_CONTAINER, QUERY_FRONTEND, REDIS, Config)

# Seconds between SIGTERM and SIGKILL. Replicas finish their batch; frontends answer what
# is in flight; Redis flushes nothing (every write is fsynced before it is acknowledged).
STOP_GRACE_SECONDS = {MODEL_CONTAINER: 5.0, QUERY_FRONTEND: 5.0, MANAGEMENT_FRONTEND: 5.0,
                      REDIS: 5.0}
# A cluster stops in three stages (replicas, frontends, Redis), each within its grace.
CLUSTER_STOP_SECONDS = (STOP_GRACE_SECONDS[MODEL_CONTAINER] + STOP_GRACE_SECONDS[QUERY_FRONTEND]
                        + STOP_GRACE_SECONDS[REDIS] + 1.0)
# Time for a cluster's servers to answer after they are started (a first Docker run included).
START_TIMEOUT_SECONDS = 120.0
# Time for the replicas of a model version to connect to the query frontend.
REPLICA_TIMEOUT_SECONDS = 120.0
# The most replicas of one model version, on any backend: far more than a machine or a small
# cluster runs, and a bound on what a count costs before a replica starts (num_replicas=10**9
# made the local supervisor build its plan until it held 21 GB, starting none).
MAX_REPLICAS_PER_VERSION = 1024
# The most query frontend processes of a cluster (one machine's): each is a process too.
MAX_QUERY_WORKERS = 256
READY_POLL_SECONDS = 0.01
PROBE_TIMEOUT_SECONDS = 2.0


class StartFailed(Exception):
    """A role did not become ready; the message says which and, where known, why."""


@dataclass(frozen=True)
class Launch:
    """One process of a cluster: what to run, how to tell it is serving, how to stop it."""
    role: str
    env: Dict[str, str]
    ready_url: str = ""          # http:// (GET answers 200), redis:// or unix:// (PING, no
                                 # password), tcp:// (accepts a connection); "" = none
    stop_grace: float = 0.0
    name: str = ""               # of the process, where a role has several; "" = the role

    @property
    def process_name(self) -> str:
        return self.name or self.role

    def argv(self, python: str = sys.executable) -> List[str]:
        if self.role == REDIS:
            # The server itself: ``python -m clipper redis`` would start Python only to exec
            # it (90 ms of CPU, taken from the frontends that start beside it).
            from clipper.cluster.redis_binary import server_command
            return server_command(Config.load([], self.env))
        return [python, "-m", "clipper", self.role]

    def image_command(self) -> List[str]:
        """The command of a runtime-image container (its entrypoint is ``python -m clipper``)."""
        return [self.role]

    def is_ready(self) -> bool:
        return _probe(self.ready_url)


def _launch(role: str, config: Config, ready_url: str = "",
            extra_env: Optional[Dict[str, str]] = None, name: str = "") -> Launch:
    return Launch(role, {**config.environment(role), **(extra_env or {})}, ready_url,
                  STOP_GRACE_SECONDS[role], name)


def redis(config: Config) -> Launch:
    return _launch(REDIS, config, config.redis_url)


def management_frontend(config: Config) -> Launch:
    # It makes no TLS connection, but importing aiohttp builds two client TLS contexts, each
    # loading the system's CA bundle: an empty bundle takes 50 ms off its start (of 300).
    return _launch(MANAGEMENT_FRONTEND, config,
                   f"http://{_reachable(config.host)}:{config.management_port}/admin/ping",
                   extra_env={"SSL_CERT_FILE": os.devnull})


def query_frontend(config: Config) -> Launch:
    # /metrics answers once the frontend follows the cluster's state and its RPC port is bound.
    return _launch(QUERY_FRONTEND, config, f"http://{_reachable(config.host)}:{config.query_port}/metrics")


def query_frontends(config: Config) -> List[Launch]:
    """The query frontend's workers: worker 0 is named as the role, worker k
    ``query-frontend-k``. The query port is shared, so a later worker is checked on its own
    RPC port (it accepts HTTP connections only once it serves; the kernel sends none before)."""
    workers = [query_frontend(config.replace(query_worker=0))]
    for k in range(1, config.query_workers):
        worker = config.replace(query_worker=k)
        workers.append(_launch(QUERY_FRONTEND, worker,
                               f"tcp://{_reachable(config.host)}:{config.rpc_port + k}",
                               name=f"{QUERY_FRONTEND}-{k}"))
    return workers


def servers(config: Config, embedded_redis: bool) -> List[Launch]:
    """The cluster's servers in start order (stop in the reverse order)."""
    return ([redis(config)] if embedded_redis else []) + [management_frontend(config),
                                                          *query_frontends(config)]


def model_container(config: Config, name: str, version: str, input_type: str, model_path: str,
                    extra_env: Optional[Dict[str, str]] = None, replica_name: str = "") -> Launch:
    """A replica of a model version; it connects to the query frontend's RPC port.
    Readiness is its registration with the frontend, which only the frontend can tell."""
    replica = config.replace(model_name=name, model_version=str(version), input_type=input_type,
                             model_path=model_path, ip=_reachable(config.host), port=config.rpc_port,
                             replica_name=replica_name)
    return _launch(MODEL_CONTAINER, replica, extra_env=extra_env)


def wait_until_ready(launches: Sequence[Launch], failure: Callable[[], Optional[str]],
                     timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Return once every launch answers, in order; raise StartFailed as soon as ``failure()``
    says why one cannot (e.g. its process exited), or when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    for launch in launches:
        while not launch.is_ready():
            reason = failure()
            if reason is None and time.monotonic() > deadline:
                reason = f"the {launch.role} did not answer at {launch.ready_url} within {timeout:g} s"
            if reason is not None:
                raise StartFailed(reason)
            time.sleep(READY_POLL_SECONDS)


def _reachable(host: str) -> str:
    """An address clients can use for a server listening on ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


def _probe(url: str) -> bool:
    """Whether the server answers, with the standard library only: every start polls this,
    and a refused connection (the usual answer while a server starts) costs one connect."""
    if not url:
        return True
    parsed = urlparse(url)
    try:
        if parsed.scheme == "tcp":
            with _connect(parsed.hostname, parsed.port):
                return True
        return _http_ok(parsed) if parsed.scheme == "http" else _redis_answers_ping(parsed)
    except OSError:              # not up yet: refused, reset, timed out
        return False


def _http_ok(parsed) -> bool:
    """GET answers 200."""
    import http.client          # here: the supervisor only pings Redis
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=PROBE_TIMEOUT_SECONDS)
    connection.sock = _connect(parsed.hostname, parsed.port)
    try:
        connection.request("GET", parsed.path or "/")
        return connection.getresponse().status == 200
    except http.client.HTTPException:
        return False
    finally:
        connection.close()


def _redis_answers_ping(parsed) -> bool:
    """PING in Redis's protocol; a Redis still loading its data answers -LOADING."""
    if parsed.scheme == "unix":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(PROBE_TIMEOUT_SECONDS)
            connection.connect(parsed.path)
            return _pong(connection)
    with _connect(parsed.hostname, parsed.port or 6379) as connection:
        return _pong(connection)


def _connect(host: str, port: int) -> socket.socket:
    """A TCP connection to the server. While nothing listens on a port of the ephemeral range
    (Linux: 32768-60999), a connect to it may be given that very port as its own and connect
    to itself; closed as usual, that socket would hold the port in TIME_WAIT for a minute,
    and the server, started a moment later, could not bind it. Such a connection is reset
    at once (no TIME_WAIT) and counts as refused."""
    connection = socket.create_connection((host, port), PROBE_TIMEOUT_SECONDS)
    if connection.getsockname() == connection.getpeername():
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
        raise ConnectionRefusedError(f"nothing listens on port {port} (the probe connected to itself)")
    return connection


def _pong(connection: socket.socket) -> bool:
    connection.sendall(b"*1\r\n$4\r\nPING\r\n")
    return connection.recv(64).startswith(b"+PONG")
