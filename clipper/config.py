"""One configuration object per process, from command-line flags and CLIPPER_* variables.

A flag wins over its variable, which wins over the default. Each field's variable is
``CLIPPER_<FIELD>``; the model-container fields match Clipper's own variables
(CLIPPER_MODEL_NAME, CLIPPER_MODEL_VERSION, CLIPPER_MODEL_PATH, CLIPPER_INPUT_TYPE,
CLIPPER_IP, CLIPPER_PORT) so that Clipper deployments configure us unchanged.
"""
import argparse
import dataclasses
import os
from typing import Mapping, Optional, Sequence

DEFAULT_HOST = "127.0.0.1"
QUERY_PORT = 1337
MANAGEMENT_PORT = 1338
RPC_PORT = 7000
METRICS_PORT = 1390
DEFAULT_CACHE_SIZE = 32 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Config:
    # frontends
    host: str = DEFAULT_HOST
    query_port: int = QUERY_PORT
    management_port: int = MANAGEMENT_PORT
    rpc_port: int = RPC_PORT
    metrics_port: int = METRICS_PORT              # Prometheus text format; 0 disables it
    redis_url: str = "redis://127.0.0.1:6379"
    cache_size: int = DEFAULT_CACHE_SIZE          # prediction cache, bytes; 0 disables it
    max_body_size: int = 4 * 1024 * 1024          # largest request body accepted, bytes
    body_timeout: float = 300.0                   # seconds to receive a request body
    admin_token: str = ""                         # if set, /admin calls need this bearer token
    redis_timeout: float = 2.0                    # seconds for any Redis call of the management frontend
    replica_timeout: float = 30.0                 # seconds of silence before a replica is dropped
    # model container
    model_name: str = ""
    model_version: str = ""
    model_path: str = ""
    input_type: str = "doubles"
    ip: str = DEFAULT_HOST                        # query frontend's RPC address
    port: int = RPC_PORT
    # local backend: the cluster's state directory (also marks every process of the cluster)
    cluster_dir: str = ""

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
        return cls(**values)


def env_name(field_name: str) -> str:
    return "CLIPPER_" + field_name.upper()
