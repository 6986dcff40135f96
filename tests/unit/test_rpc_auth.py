"""When a new cluster's RPC port requires CURVE keys (pure)."""
import pytest
import zmq

from clipper import launch
from clipper.config import Config, env_name
from clipper.rpc.auth import CONTAINER_KEY_FIELDS, cluster_keys


@pytest.mark.parametrize("mode, host, token, secured", [
    ("auto", "127.0.0.1", "", False),          # loopback, no token: open, as Clipper
    ("auto", "127.0.0.1", "t0ken", True),      # a token protects /admin: the RPC port too
    ("auto", "0.0.0.0", "", True),             # reachable from other machines
    ("curve", "127.0.0.1", "", True),
    ("open", "0.0.0.0", "t0ken", False),       # for real Clipper containers, on request
])
def test_keys_are_made_when_the_cluster_needs_them(mode, host, token, secured):
    keys = cluster_keys(mode, host, token)
    assert bool(keys) is secured
    if secured:
        assert zmq.curve_public(keys["rpc_server_secret_key"].encode()).decode() == keys["rpc_server_public_key"]
        assert zmq.curve_public(keys["rpc_client_secret_key"].encode()).decode() == keys["rpc_client_public_key"]
        assert keys != cluster_keys(mode, host, token), "keys are made for each cluster"


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="rpc_auth must be one of auto, curve, open"):
        cluster_keys("tls", "127.0.0.1", "")


def test_each_process_gets_only_the_keys_it_needs():
    keys = cluster_keys("curve", "127.0.0.1", "")
    config = Config(**keys)
    frontend = launch.query_frontend(config).env
    replica = launch.model_container(config, "m", "1", "doubles", "/m").env
    assert {name for name in replica if "_KEY" in name} == {env_name(f) for f in CONTAINER_KEY_FIELDS}
    assert keys["rpc_server_secret_key"] not in replica.values()
    assert frontend[env_name("rpc_server_secret_key")] == keys["rpc_server_secret_key"]
    # A backend starting a replica later finds the container's keys with the frontend.
    assert all(frontend[env_name(f)] == replica[env_name(f)] for f in CONTAINER_KEY_FIELDS)
    assert not any("_KEY" in name for name in launch.management_frontend(config).env)
