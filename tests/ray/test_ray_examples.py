"""The three example scripts with --backend ray, against the three-node test cluster."""
import re
import signal

from ray_helpers import assert_nothing_left, run_script, start_script, wait_for_predictions

PREDICTION = re.compile(r"""^'\{"query_id":\d+,"output":-?[0-9.e+-]+,"default":false\}', [0-9.]+ ms$""")


def test_basic_query_simplified(ray_cluster):
    result = run_script("basicQuerySimplified.py", "--backend", "ray")
    assert result.returncode == 0, result.stderr
    assert "Ray backend" in result.stdout.splitlines()[0]
    assert len([line for line in result.stdout.splitlines() if PREDICTION.match(line)]) == 1, result.stdout
    assert_nothing_left(ray_cluster["marker"])


def test_basic_query_stops_on_ctrl_c(ray_cluster):
    process = start_script("basicQuery.py", "--backend", "ray")
    try:
        wait_for_predictions(process, 3)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=90)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert_nothing_left(ray_cluster["marker"])


def test_close_clipper_finds_the_cluster_of_a_killed_script(ray_cluster):
    process = start_script("basicQuery.py", "--backend", "ray")
    try:
        wait_for_predictions(process, 1)
    finally:
        process.kill()
        process.communicate()
    first = run_script("closeClipper.py")
    assert first.returncode == 0, first.stderr
    assert "Stopped Clipper Ray cluster 'default-cluster' (" in first.stdout, first.stdout
    assert_nothing_left(ray_cluster["marker"])
    second = run_script("closeClipper.py")
    assert second.returncode == 0 and second.stdout.strip() == "No Clipper cluster is running.", second.stdout
