"""One configuration object per process, from command-line flags and CLIPPER_* variables.

A flag wins over its variable, which wins over the default. Each field's variable is
``CLIPPER_<FIELD>``; the model-container fields match Clipper's own variables
(CLIPPER_MODEL_NAME, CLIPPER_MODEL_VERSION, CLIPPER_MODEL_PATH, CLIPPER_INPUT_TYPE,
CLIPPER_IP, CLIPPER_PORT) so that Clipper deployments configure us unchanged.

Each field names the roles that read it (``roles`` below): ``clipper.launch`` gives every
process of a cluster exactly those variables, so a new setting is this one field (and its
line in the README's configuration table).
"""
import argparse
import dataclasses
import ipaddress
import os
import socket
from typing import Dict, Mapping, Optional, Sequence

DEFAULT_HOST = "127.0.0.1"
QUERY_PORT = 1337
MANAGEMENT_PORT = 1338
RPC_PORT = 7000
METRICS_PORT = 1390
DEFAULT_CACHE_SIZE = 32 * 1024 * 1024

REDIS = "redis"
QUERY_FRONTEND = "query-frontend"
MANAGEMENT_FRONTEND = "management-frontend"
MODEL_CONTAINER = "model-container"
FRONTENDS = (QUERY_FRONTEND, MANAGEMENT_FRONTEND)
SERVERS = (REDIS, *FRONTENDS)


def setting(default, *roles: str):
    """A field of Config, read by the processes of ``roles`` (none: this process only)."""
    return dataclasses.field(default=default, metadata={"roles": roles})


@dataclasses.dataclass(frozen=True)
class Config:
    # servers
    host: str = setting(DEFAULT_HOST, *SERVERS)           # where the servers listen
    query_port: int = setting(QUERY_PORT, QUERY_FRONTEND)
    management_port: int = setting(MANAGEMENT_PORT, MANAGEMENT_FRONTEND)
    rpc_port: int = setting(RPC_PORT, QUERY_FRONTEND)
    metrics_port: int = setting(METRICS_PORT, QUERY_FRONTEND)   # Prometheus text; 0 disables it
    redis_url: str = setting("redis://127.0.0.1:6379", *SERVERS)
    redis_dir: str = setting("/data", REDIS)              # where Redis keeps its append-only file
    cache_size: int = setting(DEFAULT_CACHE_SIZE, QUERY_FRONTEND)   # bytes; 0 disables the cache
    max_body_size: int = setting(4 * 1024 * 1024, *FRONTENDS)  # largest request body, bytes
    body_timeout: float = setting(300.0, *FRONTENDS)      # seconds to receive a request body
    header_timeout: float = setting(10.0, QUERY_FRONTEND)  # seconds to receive a request's headers
    max_batch_size: int = setting(10_000, QUERY_FRONTEND)  # most inputs in one input_batch
    # Most inputs waiting for one model version's replicas; beyond, an input is answered at
    # once with the default output (each waiting input holds about 400 bytes).
    max_queued_inputs: int = setting(100_000, QUERY_FRONTEND)
    admin_token: str = setting("", *FRONTENDS)            # if set, /admin calls need this bearer token
    redis_timeout: float = setting(2.0, MANAGEMENT_FRONTEND)  # seconds for any of its Redis calls
    replica_timeout: float = setting(30.0, QUERY_FRONTEND)  # silence before a replica is dropped
    # Largest frame an RPC peer may send (one model output is one frame), bytes: the query
    # frontend disconnects a peer that announces a larger one, and our containers answer
    # a larger output with an error instead of sending it. 0: no limit.
    max_output_size: int = setting(64 * 1024 * 1024, QUERY_FRONTEND, MODEL_CONTAINER)
    # Query frontend processes sharing the query port (SO_REUSEPORT when more than one);
    # worker k binds the RPC port rpc_port + k, and each replica connects to all of them.
    query_workers: int = setting(1, QUERY_FRONTEND, MODEL_CONTAINER)
    query_worker: int = setting(0, QUERY_FRONTEND)        # this worker's index, 0..query_workers-1
    # Local backend: the cluster's state directory, where query frontend worker k also
    # listens on the Unix socket rpc-k.sock, which the replicas use instead of TCP
    # (clipper.rpc.stream); "": TCP only.
    rpc_socket_dir: str = setting("", QUERY_FRONTEND, MODEL_CONTAINER)
    # Where each replica writes its metrics (clipper.container.metrics) for query frontend
    # worker 0 to serve on the metrics port: in the local backend's state directory, a Docker
    # volume, or (Ray) on the replica's node, forwarded by its actor; "": not exported.
    metrics_dir: str = setting("", QUERY_FRONTEND, MODEL_CONTAINER)
    # After each message, poll this long for the next one before sleeping (clipper.busy_poll):
    # low-load latency for CPU in that window; 0, or a single core to run on: off.
    busy_poll_us: int = setting(200, QUERY_FRONTEND, MODEL_CONTAINER)
    # RPC authentication (CURVE keys, Z85; see clipper.rpc.auth); empty: the RPC port is open.
    # The query frontend also holds the containers' keys, so that a backend can read them
    # from it when it starts a replica later (the Docker backend does).
    rpc_server_secret_key: str = setting("", QUERY_FRONTEND)
    rpc_client_public_key: str = setting("", QUERY_FRONTEND)   # the only key the frontend admits
    rpc_server_public_key: str = setting("", MODEL_CONTAINER, QUERY_FRONTEND)
    rpc_client_secret_key: str = setting("", MODEL_CONTAINER, QUERY_FRONTEND)
    # model container
    model_name: str = setting("", MODEL_CONTAINER)
    model_version: str = setting("", MODEL_CONTAINER)
    model_path: str = setting("", MODEL_CONTAINER)
    input_type: str = setting("doubles", MODEL_CONTAINER)
    replica_name: str = setting("", MODEL_CONTAINER)     # the label of its metrics; "": host and pid
    ip: str = setting(DEFAULT_HOST, MODEL_CONTAINER)      # the query frontend's RPC address
    port: int = setting(RPC_PORT, MODEL_CONTAINER)
    # local backend: the supervisor's state directory, and the size past which it starts each
    # process's log afresh (keeping the previous one as <log>.1), bytes
    cluster_dir: str = setting("")
    max_log_size: int = setting(64 * 1024 * 1024)

    @classmethod
    def load(cls, argv: Optional[Sequence[str]] = None,
             environ: Optional[Mapping[str, str]] = None) -> "Config":
        environ = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(add_help=False)
        for field in dataclasses.fields(cls):
            parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name,
                                type=field.type if field.type in (int, float) else str)
        flags, unknown = parser.parse_known_args(argv or [])
        if unknown:
            raise SystemExit(f"unknown arguments: {' '.join(unknown)}")
        values = {}
        for field in dataclasses.fields(cls):
            value = getattr(flags, field.name)
            if value is None and env_name(field.name) in environ:
                value = field.type(environ[env_name(field.name)])
            if value is not None:
                values[field.name] = value
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Refuse what no setting means: a negative size, count, port or time (a negative
        cache size had turned the cache off in silence), or no query frontend worker."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in (int, float) and not value >= 0:      # NaN too
                raise SystemExit(f"{field.name} is {value}: it must be 0 or more "
                                 f"(--{field.name.replace('_', '-')} or {env_name(field.name)})")
        if self.query_workers < 1:
            raise SystemExit(f"query_workers is {self.query_workers}: at least 1 is needed")

    def environment(self, role: str) -> Dict[str, str]:
        """The CLIPPER_* variables that give a process of ``role`` this configuration."""
        return {env_name(field.name): str(getattr(self, field.name))
                for field in dataclasses.fields(self) if role in field.metadata["roles"]}

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_loopback(host: str) -> bool:
    """Whether a server listening on ``host`` is reachable from this machine only."""
    return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback


def env_name(field_name: str) -> str:
    return "CLIPPER_" + field_name.upper()
