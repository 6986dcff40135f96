"""Every Redis key, database number and hash encoding of the cluster state (pure).

The layout is Clipper 0.4's (docs/protocol.md, 4 Redis state) so that either side can be
swapped for the original. No other module spells a key.
"""
import json
import re
from dataclasses import dataclass
from typing import Optional, Tuple

ModelId = Tuple[str, str]               # (model name, version): one version of a model

# Database numbers (Clipper's RedisDBTable).
STATE_DB = 1
MODEL_DB = 2
CONTAINER_DB = 3
APPLICATION_DB = 5
METADATA_DB = 6
APP_MODEL_LINKS_DB = 7
# Ours, in a database Clipper does not use: the token of the last management write, which
# makes every check-then-write of the management frontend atomic (see store.py).
WRITE_TOKEN_DB = 0
WRITE_TOKEN_KEY = "clipper:last-write"
# Ours: each query frontend worker's metrics, when several share the query port (the
# frontends follow DBs 2, 5, 6 and 7 only, so these writes wake none of them).
WORKER_METRICS_DB = 0


def worker_metrics_key(worker: int) -> str:
    return f"clipper:query-worker-metrics:{worker}"


# Ours: after each write, the management frontend publishes a nonce here and waits until
# every query frontend that received it has pushed an acknowledgement to the list
# sync_ack_key(nonce) (in SYNC_DB), which each does once it has applied every change
# notified before the nonce: a change that has been answered is a change queries see.
SYNC_CHANNEL = "clipper:state-sync"
SYNC_DB = 0
SYNC_ACK_SECONDS = 10          # an acknowledgement nobody waits for any more expires


def sync_ack_key(nonce: str) -> str:
    return f"clipper:state-sync:{nonce}"


DEFAULT_POLICY = "DefaultOutputSelectionPolicy"
DEFAULT_BATCH_SIZE = -1
CURRENT_VERSION_PREFIX = "CURRENT_MODEL_VERSION:"
# Model names, versions and labels may not contain these: keys are split on them.
GROUP_SEPARATORS = (",", ":")
# A model name or version that replicas run under: a DNS-1123 label, as 0.4.1's client
# required, and like every DNS label at most 63 characters (0.4.1 did not check the length;
# longer, a replica's log file name could pass the file system's 255). It names processes,
# log files, containers and images.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
# An application name, and a model name or version as widely as Clipper's REST API took them
# (0.4.1's own register_model did not check names; its replicas need a DNS-1123 name):
# nothing that could be a path, a control character or a space, or need escaping in a URL.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def is_dns_label(value: str) -> bool:
    return bool(_DNS_LABEL.match(value))


def is_safe_name(value: str) -> bool:
    return bool(_SAFE_NAME.match(value))


@dataclass(frozen=True)
class App:
    name: str
    input_type: str          # canonical spelling
    default_output: str
    latency_slo_micros: int
    policy: str = DEFAULT_POLICY


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    input_type: str          # canonical spelling
    labels: Tuple[str, ...]
    container_name: str
    model_data_path: str
    batch_size: int


@dataclass(frozen=True)
class Container:
    model_name: str
    model_version: str
    replica_id: int
    input_type: str          # canonical spelling
    connection_id: int


# ---- keys --------------------------------------------------------------------------------

def app_key(name: str) -> str:
    return name


def links_key(app_name: str) -> str:
    return app_name


def model_key(name: str, version: str) -> str:
    return f"{name}:{version}"


def model_versions_pattern(name: str) -> str:
    # A name may hold Redis's glob characters (the API refuses only ',' and ':'): escaped,
    # "s*" does not match the versions of "sum".
    return re.sub(r"([\\*?\[\]])", r"\\\1", name) + ":*"


def split_model_key(key: str) -> Tuple[str, str]:
    name, _, version = key.partition(":")
    return name, version


def current_version_key(model_name: str) -> str:
    return CURRENT_VERSION_PREFIX + model_name


def model_of_current_version_key(key: str) -> Optional[str]:
    return key[len(CURRENT_VERSION_PREFIX):] if key.startswith(CURRENT_VERSION_PREFIX) else None


def container_key(model_name: str, model_version: str, replica_id: int) -> str:
    return f"{model_name},{model_version},{replica_id}"   # commas, unlike model keys


def selection_state_key(app_name: str) -> str:
    return f"{app_name}:0:0"


def keyspace_pattern(db: int) -> str:
    return f"__keyspace@{db}__:*"


def parse_keyspace_channel(channel: str) -> Tuple[int, str]:
    """``__keyspace@5__:myapp`` -> (5, "myapp")."""
    prefix, _, key = channel.partition("__:")
    return int(prefix[len("__keyspace@"):]), key


# ---- hash encodings ----------------------------------------------------------------------

def encode_app(app: App) -> dict:
    return {"input_type": app.input_type, "policy": app.policy,
            "default_output": app.default_output,
            "latency_slo_micros": str(app.latency_slo_micros)}


def decode_app(name: str, fields: dict) -> Optional[App]:
    if not fields:
        return None
    return App(name, fields["input_type"], fields["default_output"],
               int(fields["latency_slo_micros"]), fields.get("policy", DEFAULT_POLICY))


def encode_model(model: Model) -> dict:
    return {"model_name": model.name, "model_version": model.version, "load": "0.000000",
            "input_type": model.input_type, "labels": ",".join(model.labels),
            "container_name": model.container_name, "model_data_path": model.model_data_path,
            "batch_size": str(model.batch_size), "valid": ""}


def decode_model(fields: dict) -> Optional[Model]:
    if not fields or "valid" not in fields:
        return None
    return Model(fields["model_name"], fields["model_version"], fields["input_type"],
                 tuple(fields.get("labels", "").split(",")), fields.get("container_name", ""),
                 fields.get("model_data_path", ""),
                 int(fields.get("batch_size", DEFAULT_BATCH_SIZE)))


def encode_container(container: Container) -> dict:
    return {"model_id": model_key(container.model_name, container.model_version),
            "model_name": container.model_name, "model_version": container.model_version,
            "model_replica_id": str(container.replica_id),
            "zmq_connection_id": str(container.connection_id), "batch_size": "1",
            "input_type": container.input_type}


def decode_container(fields: dict) -> Optional[Container]:
    if not fields:
        return None
    return Container(fields["model_name"], fields["model_version"],
                     int(fields["model_replica_id"]), fields["input_type"],
                     int(fields.get("zmq_connection_id", -1)))


def encode_selection_state(default_output: str) -> str:
    return json.dumps({"y_hat": default_output}, separators=(",", ":"))

