"""Clipper's serving core on a real cluster: batching, cache, latency objectives, replicas."""
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clipper_admin.deployers import python as python_deployer
from loadgen import run_load
from helpers import predict, wait_for


def recording_model(log_path, per_item=0.0, fixed=0.0, slow_flag=None, slow_per_item=0.0):
    """A sum model that logs '<pid> <batch size>' per call and sleeps to simulate work."""
    def model(xs):
        import os
        import time
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()} {len(xs)}\n")
        slow = slow_flag is not None and os.path.exists(slow_flag)
        time.sleep(fixed + (slow_per_item if slow else per_item) * len(xs))
        return [str(sum(x)) for x in xs]
    return model


def calls(log_path):
    if not Path(log_path).exists():
        return []
    return [tuple(map(int, line.split())) for line in Path(log_path).read_text().splitlines()]


def test_batches_grow_under_load_and_shrink_when_replies_are_late(clipper_conn, tmp_path):
    log, slow = str(tmp_path / "calls"), str(tmp_path / "slow")
    # Objective 100 ms: a batch may take 50 ms. Each call costs 5 ms (so queries queue up
    # while one runs), plus 0.2 ms per item when fast and 20 ms per item when slow.
    python_deployer.create_endpoint(
        clipper_conn, "aimd", "doubles",
        recording_model(log, per_item=0.0002, fixed=0.005, slow_flag=slow, slow_per_item=0.02),
        slo_micros=100_000)
    run_load(clipper_conn, "aimd", clients=24, seconds=4)
    fast_sizes = [size for _, size in calls(log)]
    assert max(fast_sizes) >= 8, f"batches did not grow: {sorted(fast_sizes)[-10:]}"
    Path(slow).touch()
    seen = len(fast_sizes)
    run_load(clipper_conn, "aimd", clients=24, seconds=4)
    slow_sizes = [size for _, size in calls(log)][seen:]
    assert max(slow_sizes[-10:]) <= 4, f"batches did not shrink: {slow_sizes[-20:]}"


def test_cache_hits_skip_the_model_and_failures_are_not_cached(clipper_conn, tmp_path):
    log = str(tmp_path / "calls")
    python_deployer.create_endpoint(clipper_conn, "cached", "doubles",
                                    recording_model(log, fixed=0.3), slo_micros=5_000_000)
    with ThreadPoolExecutor(8) as pool:           # identical queries in flight share one call
        answers = list(pool.map(lambda _: predict(clipper_conn, "cached", {"input": [1.0, 2.0]}).json(), range(8)))
    assert {a["output"] for a in answers} == {3.0} and not any(a["default"] for a in answers)
    assert len(calls(log)) == 1
    assert predict(clipper_conn, "cached", {"input": [1.0, 2.0]}).json()["output"] == 3.0
    assert len(calls(log)) == 1                   # a hit never reaches the model
    assert predict(clipper_conn, "cached", {"input": [2.0, 1.0]}).json()["output"] == 3.0
    assert len(calls(log)) == 2                   # a different input does


def test_a_repeated_body_is_answered_from_the_cache_only_while_the_cluster_is_unchanged(clipper_conn):
    """The same body a third time is answered without parsing it (the body is remembered
    with its outputs); a new version, a pinned version and a removed link still decide."""
    python_deployer.create_endpoint(clipper_conn, "repeated", "doubles",
                                    lambda xs: [str(sum(x)) for x in xs], slo_micros=5_000_000)
    body, pinned = {"input": [1.0, 2.0]}, {"input": [1.0, 2.0], "version": "1"}
    for query in (body, pinned):
        answers = [predict(clipper_conn, "repeated", query).json() for _ in range(4)]
        assert [a["output"] for a in answers] == [3.0] * 4 and not any(a["default"] for a in answers)
        assert len({a["query_id"] for a in answers}) == 4          # each answer its own query id
    python_deployer.deploy_python_closure(clipper_conn, "repeated", 2, "doubles",
                                          lambda xs: [str(10 * sum(x)) for x in xs])
    wait_for(lambda: predict(clipper_conn, "repeated", body).json()["output"] == 30.0, 2,
             "the new version's answer to a remembered body")
    assert predict(clipper_conn, "repeated", pinned).json()["output"] == 3.0
    clipper_conn.unlink_model_from_app("repeated", "repeated")
    wait_for(lambda: predict(clipper_conn, "repeated", body).json()["default"], 2,
             "the default once the model is unlinked")


def test_a_version_removed_and_deployed_again_answers_with_the_new_model(clipper_conn):
    python_deployer.create_endpoint(clipper_conn, "redeployed", "doubles",
                                    lambda xs: ["old" for _ in xs], slo_micros=5_000_000)
    assert predict(clipper_conn, "redeployed", {"input": [7.0]}).json()["output"] == "old"
    clipper_conn.stop_versioned_models({"redeployed": ["1"]})
    python_deployer.deploy_python_closure(clipper_conn, "redeployed", 1, "doubles",
                                          lambda xs: ["new" for _ in xs])
    for body in ({"input": [7.0]}, {"input": [7.0], "version": "1"}):
        assert predict(clipper_conn, "redeployed", body).json()["output"] == "new"


def test_model_errors_are_not_cached(clipper_conn, tmp_path):
    log = str(tmp_path / "calls")

    def flaky(xs):
        import os
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {len(xs)}\n")
        raise RuntimeError("transient")
    python_deployer.create_endpoint(clipper_conn, "flaky", "doubles", flaky, slo_micros=5_000_000)
    assert predict(clipper_conn, "flaky", {"input": [1.0]}).status_code == 500
    assert predict(clipper_conn, "flaky", {"input": [1.0]}).status_code == 500
    assert len(calls(log)) == 2


def test_late_answers_become_the_default_within_the_objective(clipper_conn, tmp_path):
    log = str(tmp_path / "calls")
    clipper_conn.register_application("hurried", "doubles", "-1.0", 200_000)
    python_deployer.deploy_python_closure(clipper_conn, "sleepy", 1, "doubles",
                                          recording_model(log, fixed=1.5))
    clipper_conn.link_model_to_app("hurried", "sleepy")
    started = time.monotonic()
    body = predict(clipper_conn, "hurried", {"input": [5.0]}).json()
    elapsed = time.monotonic() - started
    assert body["default"] is True and body["output"] == -1.0
    assert body["default_explanation"] == \
        "Failed to retrieve a prediction response within the specified latency SLO"
    assert 0.2 <= elapsed < 1.0, elapsed


def test_queries_are_spread_over_replicas(clipper_conn, tmp_path):
    log = str(tmp_path / "calls")
    python_deployer.create_endpoint(clipper_conn, "spread", "doubles", recording_model(log),
                                    slo_micros=2_000_000, num_replicas=2)
    for n in range(20):
        assert predict(clipper_conn, "spread", {"input": [float(n)]}).json()["default"] is False
    assert len({pid for pid, _ in calls(log)}) == 2


def test_a_replica_killed_mid_batch_loses_no_query(clipper_conn, tmp_path):
    log = str(tmp_path / "calls")
    python_deployer.create_endpoint(clipper_conn, "sturdy", "doubles", recording_model(log, fixed=1.0),
                                    slo_micros=10_000_000, num_replicas=2)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(predict, clipper_conn, "sturdy", {"input": [4.0, 4.0]}, 20)
        deadline = time.monotonic() + 10
        while not calls(log):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        victim = calls(log)[0][0]
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        body = pending.result().json()
    assert body["default"] is False and body["output"] == 8.0
    assert time.monotonic() - started < 3          # re-sent at once, not after a timeout
    assert {pid for pid, _ in calls(log)} - {victim}, "another replica answered"
    deadline = time.monotonic() + 15              # the supervisor restarts the dead replica
    while clipper_conn.get_num_replicas("sturdy") != 2 or len(
            [r for r in clipper_conn.get_all_model_replicas(verbose=True) if r["model_name"] == "sturdy"]) != 2:
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(0.1)


def sleeping_model(xs):
    """Sleeps as many seconds as the first value of each input says."""
    import time
    for x in xs:
        time.sleep(x[0])
    return [str(x[0]) for x in xs]


def test_identical_queries_sharing_an_evaluation_each_keep_their_own_deadline(clipper_conn):
    python_deployer.create_endpoint(clipper_conn, "patient", "doubles", sleeping_model,
                                    default_output="-1.0", slo_micros=3_000_000, batch_size=1)
    with ThreadPoolExecutor(3) as pool:
        blocker = pool.submit(predict, clipper_conn, "patient", {"input": [4.0]})   # the replica: busy 4 s
        time.sleep(0.2)
        first = pool.submit(predict, clipper_conn, "patient", {"input": [0.0]})     # waits until 3.2 s
        time.sleep(2.3)
        second_sent = time.monotonic()
        second = pool.submit(predict, clipper_conn, "patient", {"input": [0.0]})    # same input, until 5.5 s
        second_body = second.result().json()
        second_took = time.monotonic() - second_sent
        assert first.result().json()["default"] is True                 # its objective passed
        assert blocker.result().json()["default"] is True
    print(f"shared evaluation: the second query answered after {second_took:.2f} s of its 3 s: "
          f"{second_body}")
    assert second_body["default"] is False and second_body["output"] == 0.0, \
        f"the second query got {second_body} after {second_took:.2f} s of its 3 s"


def test_a_model_with_no_connected_replica_answers_the_default_at_once(clipper_conn):
    python_deployer.create_endpoint(clipper_conn, "scaled", "doubles", sleeping_model,
                                    default_output="-1.0", slo_micros=5_000_000)
    assert predict(clipper_conn, "scaled", {"input": [0.0]}).json()["default"] is False
    clipper_conn.set_num_replicas("scaled", 0)
    deadline = time.monotonic() + 15
    while [r for r in clipper_conn.get_all_model_replicas(verbose=True) if r["model_name"] == "scaled"]:
        assert time.monotonic() < deadline, "the stopped replica is still listed"
        time.sleep(0.1)
    started = time.monotonic()
    body = predict(clipper_conn, "scaled", {"input": [0.5]}).json()     # not in the cache
    took = time.monotonic() - started
    assert body == {"query_id": body["query_id"], "output": -1.0, "default": True,
                    "default_explanation": "No connected models found for query"}
    print(f"no connected replica: the default after {took * 1000:.0f} ms (objective 5 s)")
    assert took < 1.0, f"answered after {took:.2f} s (objective 5 s)"
    assert predict(clipper_conn, "scaled", {"input": [0.0]}).json()["output"] == 0.0   # cached answers stay


def scheduling_policies(xs):
    """Each output: the scheduling policy of the model's thread and of a thread it starts."""
    import os
    import threading
    started = []
    worker = threading.Thread(target=lambda: started.append(os.sched_getscheduler(0)))
    worker.start()
    worker.join()
    return [f"{os.sched_getscheduler(0)} {started[0]}" for _ in xs]


def test_replicas_run_as_batch_work_so_the_frontend_is_not_preempted(clipper_conn):
    """Where replicas share cores with the query frontend, a replica woken by a batch must
    not cut the frontend off mid-request: the model, and the threads it starts, run under
    SCHED_BATCH; the frontend keeps the default policy."""
    python_deployer.create_endpoint(clipper_conn, "policies", "doubles", scheduling_policies,
                                    slo_micros=5_000_000)
    answer = predict(clipper_conn, "policies", {"input": [1.0]}).json()
    assert answer["output"] == f"{os.SCHED_BATCH} {os.SCHED_BATCH}", answer
    frontend = next(p["pid"] for p in clipper_conn.cm.cluster.processes() if p["role"] == "query-frontend")
    assert os.sched_getscheduler(frontend) == os.SCHED_OTHER
