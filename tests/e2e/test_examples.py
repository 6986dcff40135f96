"""The three example scripts, run exactly as the README says, as subprocesses."""
import pytest

from helpers import processes_under
from clipper_admin import ClipperException
from clipper_admin.docker.docker_container_manager import engine
from scripts import RESPONSE_LINE, assert_nothing_left, run_script, start_script, wait_for_predictions


def test_basic_query_simplified_prints_one_prediction_and_cleans_up(clipper_state_dir):
    result = run_script("basicQuerySimplified.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "local backend" in lines[0]
    predictions = [line for line in lines if RESPONSE_LINE.match(line)]
    assert len(predictions) == 1, result.stdout
    assert predictions[0].startswith("""'{"query_id":0,"output":""")
    assert_nothing_left(clipper_state_dir)


def test_close_clipper_after_sigkill_then_again(clipper_state_dir):
    process = start_script("basicQuery.py")
    try:
        wait_for_predictions(process, 1)
    finally:
        process.kill()
        process.communicate()
    assert processes_under(clipper_state_dir), "the cluster should outlive its killed script"
    first = run_script("closeClipper.py")
    assert first.returncode == 0, first.stderr
    assert "Stopped Clipper cluster 'default-cluster' (" in first.stdout
    assert_nothing_left(clipper_state_dir)
    second = run_script("closeClipper.py")
    assert second.returncode == 0 and second.stdout.strip() == "No Clipper cluster is running."


def test_these_tests_reach_no_docker_engine_so_closeclipper_stops_no_users_cluster():
    """closeClipper.py above, without --cluster, stopped every Docker cluster of the engine
    (a user's own, another session's), though these tests start none there. (It tells only
    where an engine runs, as in CI here: elsewhere there is none to reach anyway.)"""
    with pytest.raises(ClipperException, match="The Docker engine is not reachable"):
        engine()


def test_a_taken_port_gets_one_clear_line(clipper_state_dir):
    import socket
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 1337))
        blocker.listen()
        result = run_script("basicQuerySimplified.py")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        "Error: Port 1337 (query frontend) is already in use")
    assert "python closeClipper.py" in result.stderr and "Traceback" not in result.stderr
    assert_nothing_left(clipper_state_dir)
