"""Inputs waiting for a model are bounded: each holds memory (a review's 60 batches of
10,000 inputs to a slow model took the query frontend from 43 to 345 MB), so beyond
max_queued_inputs an input gets the default output at once, saying why."""
import time

from clipper_admin.deployers import python as python_deployer
from helpers import local_cluster, predict

PORTS = dict(query_port=29337, management_port=29338, rpc_port=29700, metric_port=29390)


def slow(xs):
    time.sleep(0.5)
    return [str(x[0]) for x in xs]


def test_inputs_beyond_the_queue_bound_get_the_default_at_once():
    with local_cluster(name="bounded", manager_kwargs={"max_queued_inputs": 5}, **PORTS) as conn:
        python_deployer.create_endpoint(conn, "slow", "doubles", slow, default_output="-1.0",
                                        slo_micros=30_000_000, batch_size=1)
        started = time.monotonic()
        answers = predict(conn, "slow", {"input_batch": [[float(i)] for i in range(20)]}, timeout=60)
        assert answers.status_code == 200, answers.text
        answers = answers.json()["batch_predictions"]
        full = [a for a in answers if a.get("default_explanation", "").startswith("The model's queue is full")]
        # One input goes to the replica, five wait: the other fourteen are not queued.
        assert len(full) == 14 and all(a["output"] == -1.0 for a in full)
        assert [a["output"] for a in answers if a not in full] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert time.monotonic() - started < 10        # the six computed, one after another
        # Once the queue has room again, inputs are queued as before.
        assert predict(conn, "slow", {"input": [7.0]}, timeout=30).json()["output"] == 7.0
