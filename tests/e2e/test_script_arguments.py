"""The example scripts' arguments: help and mistakes start and stop nothing; closeClipper.py
stops only what it is asked to."""
import os

import pytest

from clipper_admin.backends import BACKENDS
from helpers import local_cluster, port_open, processes_under
from scripts import run_script

# A cluster of the user's own that no --help or typo may touch, on ports of its own.
BYSTANDER_PORTS = dict(query_port=1437, management_port=1438, rpc_port=7100, metric_port=1490)


@pytest.fixture(scope="module")
def bystander():
    with local_cluster("bystander", **BYSTANDER_PORTS) as conn:
        yield conn


@pytest.mark.parametrize("script", ["basicQuerySimplified.py", "basicQuery.py", "closeClipper.py"])
def test_help_starts_and_stops_nothing(script, bystander, clipper_state_dir):
    before = {p.pid for p in processes_under(clipper_state_dir)}
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}") and "--backend" in result.stdout
    assert {p.pid for p in processes_under(clipper_state_dir)} == before


@pytest.mark.parametrize("script", ["basicQuerySimplified.py", "basicQuery.py", "closeClipper.py"])
def test_an_unknown_argument_is_an_error(script, bystander, clipper_state_dir):
    before = {p.pid for p in processes_under(clipper_state_dir)}
    result = run_script(script, "--clustr", "x")
    assert result.returncode == 2
    assert "unrecognized arguments: --clustr x" in result.stderr and "Traceback" not in result.stderr
    assert {p.pid for p in processes_under(clipper_state_dir)} == before


def test_an_invalid_clipper_backend_is_an_error(bystander, clipper_state_dir):
    before = {p.pid for p in processes_under(clipper_state_dir)}
    result = run_script("basicQuerySimplified.py", env={**os.environ, "CLIPPER_BACKEND": "dokcer"})
    assert result.returncode == 2
    assert f"CLIPPER_BACKEND='dokcer' is not a backend; use one of: {', '.join(BACKENDS)}" in result.stderr
    assert {p.pid for p in processes_under(clipper_state_dir)} == before


def test_close_clipper_stops_only_the_named_cluster_or_backend(bystander, clipper_state_dir):
    with local_cluster("target"):
        # Asked to look at Docker where it cannot: it says so, rather than "nothing is running".
        blind = run_script("closeClipper.py", "--backend", "docker",
                           env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"})
        assert blind.returncode == 1 and "No Clipper cluster" not in blind.stdout
        assert "The Docker engine is not reachable" in blind.stderr or "package 'docker'" in blind.stderr
        result = run_script("closeClipper.py", "--cluster", "target")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Stopped Clipper cluster 'target' (")
        assert len(result.stdout.splitlines()) == 1, result.stdout
        assert not (clipper_state_dir / "target").exists()
        assert bystander.get_all_apps() == [], "the other cluster should still answer"
        again = run_script("closeClipper.py", "--cluster-name", "target")     # as `clipper stop` spells it
        assert again.stdout.strip() == "No Clipper cluster named 'target' is running."
        command = run_script("-m", "clipper_admin.cli", "stop", "--cluster-name", "target")
        assert command.stdout == again.stdout
    result = run_script("closeClipper.py", "--backend", "local")
    assert result.stdout.startswith("Stopped Clipper cluster 'bystander' (")
    assert not processes_under(clipper_state_dir)


def test_clipper_start_puts_the_metrics_port_beside_its_query_port(bystander, clipper_state_dir):
    """`clipper start --query-port N` takes N + 53 for metrics, as the README says (it took
    1390 whatever the query port, so a second cluster's start failed on the first's)."""
    ports = ["--query-port", "1537", "--management-port", "1538", "--rpc-port", "7200"]
    result = run_script("-m", "clipper_admin.cli", "start", "--cluster-name", "side", *ports)
    try:
        assert result.returncode == 0, result.stderr
        assert port_open(1590) and not port_open(1390)
    finally:
        assert run_script("-m", "clipper_admin.cli", "stop", "--cluster-name", "side").returncode == 0
    assert not processes_under(clipper_state_dir / "side")


@pytest.mark.parametrize("backend, sdk", [("ray", "ray"), ("docker", "docker")])
def test_a_backend_without_its_sdk_says_what_to_install(backend, sdk, clipper_state_dir):
    """(--backend ray without Ray ended in a ModuleNotFoundError traceback.)"""
    hidden = (f"import runpy, sys; sys.modules[{sdk!r}] = None; "
              f"sys.argv = ['basicQuerySimplified.py', '--backend', {backend!r}]; "
              "runpy.run_path('basicQuerySimplified.py', run_name='__main__')")
    result = run_script("-c", hidden)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert f"pip install -r requirements-{backend}.txt" in result.stderr


def test_clipper_start_refuses_a_cluster_name_that_is_a_path(clipper_state_dir):
    sandbox = clipper_state_dir / "cli-sandbox"
    (sandbox / "home-stuff").mkdir(parents=True)
    (sandbox / "home-stuff" / "thesis.tex").write_text("keep")
    env = {**os.environ, "CLIPPER_STATE_DIR": str(sandbox / "state")}
    result = run_script("-m", "clipper_admin.cli", "start", "--cluster-name", "..", "--query-port", "1537",
                        "--management-port", "1538", "--rpc-port", "7200", env=env)
    assert result.returncode == 1 and "A cluster name is 1 to 128 letters" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert (sandbox / "home-stuff" / "thesis.tex").read_text() == "keep"
    assert not port_open(1537)


def test_the_clipper_command_takes_its_backend_from_clipper_backend_as_the_scripts_do(clipper_state_dir):
    """It always looked at the local backend: `clipper status` of a Docker cluster said none ran."""
    docker = run_script("-m", "clipper_admin.cli", "status", "--cluster-name", "elsewhere",
                        env={**os.environ, "CLIPPER_BACKEND": "docker", "DOCKER_HOST": "unix:///nonexistent"})
    assert docker.returncode == 1
    assert "The Docker engine is not reachable" in docker.stderr or "package 'docker'" in docker.stderr, docker.stderr
    typo = run_script("-m", "clipper_admin.cli", "status", env={**os.environ, "CLIPPER_BACKEND": "dokcer"})
    assert typo.returncode == 2 and "CLIPPER_BACKEND='dokcer' is not a backend" in typo.stderr
