"""What a model container of the Docker backend is started with, from the running query
frontend's environment (no Docker engine needed: the environment is the frontend's own)."""
import pytest

from clipper import launch as recipe
from clipper.config import QUERY_FRONTEND, Config, env_name

docker_backend = pytest.importorskip("clipper_admin.docker.docker_container_manager")


def test_a_model_container_takes_the_frontends_max_output_size_busy_polling_and_keys():
    """It took the default 64 MiB whatever the cluster's: with a lower limit the frontend cut
    off a replica sending a larger output (its queries timed out, no error said why); with a
    higher one, the replica refused outputs the frontend takes."""
    frontend = Config(max_output_size=1000, busy_poll_us=0, rpc_server_public_key="server-public",
                      rpc_client_secret_key="client-secret").environment(QUERY_FRONTEND)
    config = docker_backend.replica_config(frontend, 7010)
    assert (config.max_output_size, config.busy_poll_us, config.rpc_port) == (1000, 0, 7010)
    assert (config.rpc_server_public_key, config.rpc_client_secret_key) == ("server-public", "client-secret")
    env = recipe.model_container(config, "m", "1", "doubles", model_path="").env
    assert env[env_name("max_output_size")] == "1000"


def test_an_open_rpc_port_gives_a_model_container_no_keys():
    config = docker_backend.replica_config(Config().environment(QUERY_FRONTEND), 7000)
    assert (config.rpc_server_public_key, config.rpc_client_secret_key) == ("", "")
    assert config.max_output_size == Config.max_output_size
