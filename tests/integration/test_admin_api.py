"""Every ClipperConnection method on a real local cluster: what it returns, what it changes."""
import functools
import json
import os
import shutil
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from clipper.container.frameworks import METADATA_FILE
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager, UnconnectedException
from clipper_admin.deployers import python as python_deployer
from helpers import ROOT, predict, wait_for


def version_one(xs):
    return ["1" for _ in xs]


def version_two(xs):
    return ["2" for _ in xs]


def replicas_of(conn, name, version):
    return sorted(r["model_replica_id"] for r in conn.get_all_model_replicas(verbose=True)
                  if r["model_name"] == name and r["model_version"] == str(version))


@pytest.fixture(scope="module")
def conn(clipper_conn):
    return clipper_conn


def test_methods_need_a_connection():
    unconnected = ClipperConnection(LocalContainerManager(cluster_name="never-started"))
    with pytest.raises(UnconnectedException, match="No connection to Clipper cluster"):
        unconnected.register_application("a", "doubles", "0", 1000)
    with pytest.raises(UnconnectedException):       # as in 0.4.1 (it answered [] here)
        unconnected.get_clipper_logs()
    with pytest.raises(ClipperException, match="No running Clipper cluster named 'never-started'"):
        unconnected.connect()
    # 0.4.1 built images without a cluster; a local build goes into its cluster's state (it
    # was a bare FileNotFoundError).
    with pytest.raises(ClipperException, match="No running Clipper cluster named 'never-started'"):
        unconnected.build_model("m", 1, str(ROOT / "docs"), "default")


@pytest.mark.parametrize("cache_size", [-1, 1.5, "32MiB"])
def test_a_cache_size_that_is_not_a_number_of_bytes_is_refused_before_anything_starts(cache_size):
    manager = LocalContainerManager(cluster_name="never-started")
    with pytest.raises(ClipperException, match="cache_size .* must be a whole number >= 0"):
        ClipperConnection(manager).start_clipper(cache_size=cache_size)
    assert not manager.cluster.exists()


def test_connect_from_another_connection(conn):
    other = ClipperConnection(LocalContainerManager(cluster_name=conn.cm.cluster_name))
    other.connect()
    assert other.get_query_addr() == conn.get_query_addr() == "localhost:1337"
    assert other.get_metric_addr()


def test_applications(conn):
    conn.register_application("app-a", "doubles", "0.5", 100000)
    conn.register_application("app-b", "ints", "none", 200000)
    assert set(conn.get_all_apps()) >= {"app-a", "app-b"}
    assert conn.get_app_info("app-a") == {"input_type": "doubles", "default_output": "0.5",
                                          "latency_slo_micros": 100000, "name": "app-a",
                                          "linked_models": []}
    assert {"name": "app-b", "input_type": "integers", "default_output": "none",
            "latency_slo_micros": 200000, "linked_models": []} in conn.get_all_apps(verbose=True)
    with pytest.raises(ClipperException, match="application 'app-a' already exists"):
        conn.register_application("app-a", "doubles", "0.5", 100000)
    with pytest.raises(ClipperException, match="'dubbles' is not a valid input type"):
        conn.register_application("app-c", "dubbles", "0", 1000)
    with pytest.raises(ClipperException, match="Invalid application name"):
        conn.register_application("bad/name", "doubles", "0", 1000)
    with pytest.raises(ClipperException, match="latency_slo_micros must be a positive number"):
        conn.register_application("app-c", "doubles", "0", 0)    # Clipper took it: every query a default
    conn.unregister_application("app-b")
    assert conn.get_app_info("app-b") is None
    with pytest.warns(DeprecationWarning):
        conn.delete_application("app-a")
    assert "app-a" not in conn.get_all_apps()
    with pytest.raises(ClipperException, match="Application 'app-a' does not exist"):
        conn.unregister_application("app-a")


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain"},      # a form or fetch() POST, sent cross-site without asking
    {},                                  # fetch() of a Blob: no Content-Type at all
    {"Content-Type": "application/json"},    # what a page gets after a DNS rebinding
], ids=["text-plain", "no-content-type", "json"])
def test_a_web_page_cannot_drive_the_management_api(conn, headers):
    """Browsers send Origin with every POST; clipper_admin, curl and scripts do not."""
    url = f"http://{conn.cm.get_admin_addr()}/admin/add_app"
    body = b'{"name": "from-a-page", "input_type": "doubles", "default_output": "0", "latency_slo_micros": 1000}'
    response = requests.post(url, data=body, timeout=5, headers={**headers, "Origin": "http://evil.example"})
    assert response.status_code == 403 and "web pages" in response.text
    assert "from-a-page" not in conn.get_all_apps()
    response = requests.post(url, data=body, timeout=5, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    conn.unregister_application("from-a-page")


def test_unregistered_app_stops_being_served_as_soon_as_redis_says_so(conn):
    """The query frontend hears of the deletion from Redis's notification, within moments
    (Clipper served a deleted app until its frontend restarted). A loaded machine can hand
    the next query to the frontend before the notification: so a short deadline, not zero."""
    conn.register_application("fleeting", "doubles", "0.5", 100000)
    assert predict(conn, "fleeting", {"input": [1.0]}).status_code == 200
    conn.unregister_application("fleeting")
    deadline = time.monotonic() + 1.0
    while predict(conn, "fleeting", {"input": [1.0]}).status_code != 404:
        assert time.monotonic() < deadline, "the deleted application is still served after 1 s"
        time.sleep(0.01)


def test_containerless_model_links_and_their_checks(conn):
    conn.register_application("linked-app", "doubles", "0.5", 100000)
    conn.register_model("nocontainer", 3, "doubles", labels=["a", "b"])
    assert conn.get_model_info("nocontainer", 3) == {
        "model_name": "nocontainer", "model_version": "3", "input_type": "doubles",
        "labels": ["a", "b"], "container_name": "NO_CONTAINER",
        "model_data_path": "DEPRECATED", "is_current_version": True}
    assert "nocontainer:3" in conn.get_all_models()
    with pytest.raises(ClipperException, match="No model with name 'ghost' exists."):
        conn.link_model_to_app("linked-app", "ghost")
    conn.register_model("int-model", 1, "ints")
    with pytest.raises(ClipperException, match="incompatible input_type 'integers'"):
        conn.link_model_to_app("linked-app", "int-model")
    conn.link_model_to_app("linked-app", "nocontainer")
    assert conn.get_linked_models("linked-app") == ["nocontainer"]
    assert conn.get_app_info("linked-app")["linked_models"] == ["nocontainer"]
    conn.register_model("other", 1, "doubles")
    with pytest.raises(ClipperException, match="A model with name nocontainer is already linked"):
        conn.link_model_to_app("linked-app", "other")
    with pytest.raises(ClipperException, match="containerless model nocontainer:3"):
        conn.set_num_replicas("nocontainer", 2)
    # A containerless model with no replica connected: the default, at once.
    body = predict(conn, "linked-app", {"input": [1.0]}).json()
    assert body["default"] is True and body["default_explanation"] == "No connected models found for query"
    # One name sent thousands of times is one link to remove (Redis's Lua stack overflowed: 500).
    response = requests.post(f"http://{conn.cm.get_admin_addr()}/admin/delete_model_links", timeout=30,
                             json={"app_name": "linked-app", "model_names": ["nocontainer"] * 9000})
    assert response.status_code == 200, response.text
    assert conn.get_linked_models("linked-app") == []
    # Adding links to many names is refused before any is looked up: 60,000 names, two Redis
    # calls each, held every change of the cluster for 15 s.
    many = {"app_name": "linked-app", "model_names": ["nocontainer"] * 200_000}
    started = time.monotonic()
    response = requests.post(f"http://{conn.cm.get_admin_addr()}/admin/add_model_links", json=many, timeout=60)
    assert response.status_code == 400 and "at most one model. Attempted to add links to 200000" in response.text
    assert time.monotonic() - started < 10      # some 50 s before
    conn.link_model_to_app("linked-app", "nocontainer")
    conn.unlink_model_from_app("linked-app", "nocontainer")
    assert conn.get_linked_models("linked-app") == []
    with pytest.raises(ClipperException, match="Cannot remove nonexistent link"):
        conn.unlink_model_from_app("linked-app", "nocontainer")
    with pytest.raises(ClipperException, match="model with name 'other' and version '1' already exists"):
        conn.register_model("other", 1, "doubles")
    with pytest.raises(ClipperException, match="The batch size must be positive"):
        conn.register_model("other", 2, "doubles", batch_size=0)
    with pytest.raises(ClipperException, match="Invalid model version supplied: a:b"):
        conn.register_model("other", "a:b", "doubles")


@pytest.mark.parametrize("name, version", [("Upper", 1), ("has_underscore", 1), ("ok", "1.0"), ("-x", 1),
                                           ("x" * 64, 1), ("ok", "1" * 64)])
def test_model_names_must_be_dns_labels(conn, name, version):
    with pytest.raises(ClipperException, match="DNS-1123"):
        python_deployer.deploy_python_closure(conn, name, version, "doubles", version_one)


@pytest.mark.parametrize("name", ["a\x00b", "a/b", "..", "a b", "line\nbreak", "\u00e9t\u00e9"])
def test_the_server_registers_no_model_name_that_could_be_a_path_or_hold_control_characters(conn, name):
    """Clipper's REST API took any name without ',' or ':'; one with a NUL byte, given replicas,
    stopped a whole cluster here. The REST API stays as wide as Clipper's otherwise."""
    url = f"http://{conn.cm.get_admin_addr()}/admin/add_model"
    model = {"model_version": "1", "labels": [], "input_type": "doubles", "container_name": "img",
             "model_data_path": "/tmp", "batch_size": -1}
    response = requests.post(url, json={**model, "model_name": name}, timeout=5)
    assert response.status_code == 400 and "Use letters, digits" in response.text
    response = requests.post(url, json={**model, "model_name": "m", "model_version": name}, timeout=5)
    assert response.status_code == 400 and "Invalid model version" in response.text
    assert all(not m.startswith(("a", "m:")) for m in conn.get_all_models())


def test_a_model_directory_named_through_the_rest_api_is_never_run(conn, tmp_path):
    """Anyone who can reach the management API can register a model whose image is a
    directory of theirs, with metadata naming a program as its interpreter: an operator's
    set_num_replicas must not run it (it did, as the operator)."""
    ran = tmp_path / "ran"
    program = tmp_path / "not-python"
    program.write_text(f"#!/bin/sh\ntouch {ran}\n")
    program.chmod(0o755)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "func.pkl").write_bytes(b"not a pickle")
    (planted / METADATA_FILE).write_text(json.dumps({"python": str(program)}))
    conn.register_model("planted", "1", "doubles", image=str(planted))
    try:
        with pytest.raises(ClipperException, match="that build_model made in the cluster's state"):
            conn.set_num_replicas("planted", 1, version="1")
        time.sleep(0.5)
        assert not ran.exists() and conn.cm.get_num_replicas("planted", "1") == 0
    finally:
        requests.post(f"http://{conn.cm.get_admin_addr()}/admin/delete_versioned_model",
                      json={"model_name": "planted", "model_version": "1"}, timeout=5).raise_for_status()


def test_a_model_registered_under_a_rest_name_is_served_no_replica_without_a_dns_name(conn, tmp_path):
    conn.register_model("Rest_Model", "v1.0", "doubles", image="some-image")   # 0.4.1 did not check
    assert "Rest_Model:v1.0" in conn.get_all_models()
    with pytest.raises(ClipperException, match="DNS-1123"):
        conn.set_num_replicas("Rest_Model", 1, version="v1.0")
    requests.post(f"http://{conn.cm.get_admin_addr()}/admin/delete_versioned_model",
                  json={"model_name": "Rest_Model", "model_version": "v1.0"}, timeout=5).raise_for_status()


def test_versions_deploy_roll_back_and_pin(conn):
    python_deployer.create_endpoint(conn, "versioned", "doubles", version_one, slo_micros=2000000)
    assert conn.get_current_model_version("versioned") == "1"
    python_deployer.deploy_python_closure(conn, "versioned", 2, "doubles", version_two)
    assert conn.get_current_model_version("versioned") == "2"
    assert predict(conn, "versioned", {"input": [0.0]}).json()["output"] == 2
    conn.set_model_version("versioned", 1)
    assert predict(conn, "versioned", {"input": [0.0]}).json()["output"] == 1
    assert predict(conn, "versioned", {"input": [0.0], "version": "2"}).json()["output"] == 2
    conn.set_model_version("versioned", "2")
    assert predict(conn, "versioned", {"input": [0.0]}).json()["output"] == 2
    with pytest.raises(ClipperException, match="Cannot set non-existent version '7'"):
        conn.set_model_version("versioned", 7)
    with pytest.raises(ClipperException, match="Cannot set version for nonexistent model 'nope'"):
        conn.set_model_version("nope", 1)
    with pytest.raises(ClipperException, match="No versions of model nope registered"):
        conn.get_current_model_version("nope")
    with pytest.raises(ClipperException, match="already exists"):
        python_deployer.deploy_python_closure(conn, "versioned", 2, "doubles", version_two)


def test_a_version_is_pinned_in_a_query_to_an_app_whose_model_has_another_name(conn):
    """test_query_specific_model_version: the app and its model are named apart, so the
    error for a version that does not exist must name the model."""
    conn.register_application("pin-by-name", "doubles", "DEFAULT", 3000000)
    python_deployer.deploy_python_closure(conn, "pinned-model", "v1", "doubles", version_one)
    conn.link_model_to_app("pin-by-name", "pinned-model")
    python_deployer.deploy_python_closure(conn, "pinned-model", "v2", "doubles", version_two)
    first = predict(conn, "pin-by-name", {"input": [1.0, 2.0, 3.0], "version": "v1"}).json()
    assert (first["output"], first["default"]) == (1, False)
    current = predict(conn, "pin-by-name", {"input": [1.0, 2.0, 3.0]}).json()
    assert (current["output"], current["default"]) == (2, False)
    missing = predict(conn, "pin-by-name", {"input": [1.0, 2.0, 3.0], "version": "no-such-version"})
    assert missing.status_code == 400 and missing.json()["error"] == "Query processing error"
    assert missing.json()["cause"] == "Requested version: no-such-version does not exist for model: pinned-model"


def test_every_query_after_a_change_returns_sees_it(conn):
    """Read your writes: once set_model_version (or a link) has returned, no query is answered
    from the query frontend's older view. Each flip is followed at once by a query; before the
    management frontend waited for the query frontend to apply its changes, about 1 query in
    70 got the other version's answer."""
    python_deployer.create_endpoint(conn, "flipped", "doubles", version_one, slo_micros=2000000)
    python_deployer.deploy_python_closure(conn, "flipped", 2, "doubles", version_two)
    session = requests.Session()
    url = f"http://{conn.get_query_addr()}/flipped/predict"
    answers = []
    for flip in range(300):
        wanted = 1 + flip % 2
        conn.set_model_version("flipped", wanted)
        answers.append((wanted, session.post(url, json={"input": [float(flip)]}, timeout=10).json()["output"]))
    assert [flip for flip, (wanted, got) in enumerate(answers) if got != wanted] == []
    for index in range(30):
        conn.register_application(f"linked-{index}", "doubles", "default", 2000000)
        conn.link_model_to_app(f"linked-{index}", "flipped")
        answer = session.post(f"http://{conn.get_query_addr()}/linked-{index}/predict",
                              json={"input": [1.0]}, timeout=10).json()
        assert answer["default"] is False, answer


class Unloadable:
    """Its replica cannot unpickle it, so the replica exits at every start."""
    def __reduce__(self):
        return (int, ("not a number",))


def test_a_failed_deploy_says_what_is_left_and_how_to_undo_it(conn):
    python_deployer.create_endpoint(conn, "undone", "doubles", version_one, slo_micros=2000000)
    broken = Unloadable()
    with pytest.raises(ClipperException) as failure:
        python_deployer.deploy_python_closure(conn, "undone", 2, "doubles", lambda xs: [str(broken)])
    assert "keeps exiting" in failure.value.msg
    log_tail = failure.value.msg.split("Last lines of its log:\n", 1)[1]
    assert log_tail.startswith("Traceback (most recent call last):"), "the tail of one run, whole"
    assert log_tail.count("Traceback (most recent call last):") == 1, log_tail
    assert failure.value.msg.endswith(
        "Model undone:2 stays registered as the current version, so its applications get their "
        "default output: go back with set_model_version('undone', '1'), then remove it with "
        "stop_versioned_models({'undone': ['2']}).")
    conn.set_model_version("undone", "1")
    conn.stop_versioned_models({"undone": ["2"]})
    assert predict(conn, "undone", {"input": [0.0]}).json()["output"] == 1
    python_deployer.deploy_python_closure(conn, "undone", 2, "doubles", version_two)
    assert predict(conn, "undone", {"input": [0.0]}).json()["output"] == 2


def test_a_model_that_is_not_a_function_is_refused_before_anything_starts(conn):
    with pytest.raises(ClipperException, match="func must be a function of a batch of inputs .* got int 42"):
        python_deployer.deploy_python_closure(conn, "not-callable", 1, "doubles", 42)
    assert conn.get_model_info("not-callable", 1) is None


def test_replicas_scale_and_inactive_versions_stop(conn):
    python_deployer.create_endpoint(conn, "scaled", "doubles", version_one, slo_micros=2000000)
    assert conn.get_num_replicas("scaled") == 1
    conn.set_num_replicas("scaled", 3)
    assert conn.get_num_replicas("scaled") == 3 and replicas_of(conn, "scaled", 1) == [0, 1, 2]
    info = conn.get_model_replica_info("scaled", 1, 2)
    assert info == {"model_id": "scaled:1", "model_name": "scaled", "model_version": "1",
                    "model_replica_id": 2, "input_type": "doubles"}
    assert "scaled:1:2" in conn.get_all_model_replicas()
    assert conn.get_model_replica_info("scaled", 1, 99) is None
    conn.set_num_replicas("scaled", 1)
    assert conn.get_num_replicas("scaled") == 1 and len(replicas_of(conn, "scaled", 1)) == 1
    python_deployer.deploy_python_closure(conn, "scaled", 2, "doubles", version_two)
    conn.set_model_version("scaled", 2, num_replicas=2)
    assert len(replicas_of(conn, "scaled", 2)) == 2
    conn.stop_inactive_model_versions(["scaled"])
    assert replicas_of(conn, "scaled", 1) == [] and len(replicas_of(conn, "scaled", 2)) == 2
    assert conn.get_model_info("scaled", 1) is None and conn.get_model_info("scaled", 2)
    assert predict(conn, "scaled", {"input": [0.0]}).json()["output"] == 2


@pytest.mark.parametrize("count", ["2", 1.5, None, True, -1])
def test_a_replica_count_that_is_not_a_whole_number_is_refused_at_once(conn, count):
    if "counted" not in conn.get_all_apps():
        python_deployer.create_endpoint(conn, "counted", "doubles", version_one, slo_micros=2000000)
    asked = time.monotonic()
    with pytest.raises(ClipperException, match=f"num_replicas must be a whole number >= 0, not {count!r}"):
        conn.set_num_replicas("counted", count)
    with pytest.raises(ClipperException, match="num_replicas must be a whole number >= 0"):
        python_deployer.deploy_python_closure(conn, "counted", 2, "doubles", version_two, num_replicas=count)
    assert time.monotonic() - asked < 10, "refused before anything waited"
    assert conn.get_model_info("counted", 2) is None
    assert conn.get_num_replicas("counted") == 1 and replicas_of(conn, "counted", 1) == [0]
    assert predict(conn, "counted", {"input": [0.0]}).json()["output"] == 1


def test_a_refused_deploy_leaves_no_copy_of_its_model(conn):
    """Each refused try kept a copy of the model (with the packages it installed) in the
    cluster's state, for as long as the cluster lived."""
    models = conn.cm.cluster.path / "models"
    before = set(os.listdir(models))
    with pytest.raises(ClipperException, match="'dubbles' is not a valid input type"):
        python_deployer.deploy_python_closure(conn, "refused-build", 1, "dubbles", version_one)
    with pytest.raises(ClipperException, match="num_replicas must be a whole number >= 0"):
        python_deployer.deploy_python_closure(conn, "refused-build", 1, "doubles", version_one, num_replicas=-1)
    assert set(os.listdir(models)) == before
    python_deployer.deploy_python_closure(conn, "refused-build", 1, "doubles", version_one)   # the next try serves
    kept = set(os.listdir(models)) - before
    assert len(kept) == 1 and conn.get_model_info("refused-build", 1)["container_name"] == str(models / kept.pop())
    assert replicas_of(conn, "refused-build", 1) == [0]


def test_a_replica_count_beyond_what_a_machine_runs_is_refused_at_once(conn):
    """num_replicas=10**9 (a slip of the keyboard) made the supervisor build its plan of a
    billion replicas until it held 21 GB, and every later change of replicas waited behind it."""
    if "overcounted" not in conn.get_all_apps():
        python_deployer.create_endpoint(conn, "overcounted", "doubles", version_one, slo_micros=2000000)
    asked = time.monotonic()
    with pytest.raises(ClipperException, match="num_replicas must be at most 1024, not 1000000000"):
        conn.set_num_replicas("overcounted", 10 ** 9)
    with pytest.raises(ClipperException, match="num_replicas must be at most 1024, not 1025"):
        python_deployer.deploy_python_closure(conn, "overcounted", 2, "doubles", version_two, num_replicas=1025)
    assert time.monotonic() - asked < 10, "refused before anything waited"
    assert conn.get_model_info("overcounted", 2) is None
    conn.set_num_replicas("overcounted", 2)                  # the supervisor still applies changes
    assert len(replicas_of(conn, "overcounted", 1)) == 2
    assert predict(conn, "overcounted", {"input": [0.0]}).json()["output"] == 1


@pytest.mark.parametrize("field, value", [("count", "2"), ("gpus", "1"), ("model_dir", None),
                                          ("name", "a\x00b"), ("version", "../../x"), ("count", 10 ** 9)])
def test_a_bad_entry_in_the_wanted_replicas_does_not_stop_the_cluster(conn, field, value):
    """Written by something other than our client, which checks it: the supervisor leaves that
    model's replicas as they are and keeps the cluster up."""
    if "miscounted" not in conn.get_all_apps():
        python_deployer.create_endpoint(conn, "miscounted", "doubles", version_one, slo_micros=2000000)
    conn.set_num_replicas("miscounted", 1)
    with conn.cm.cluster.editing_replicas() as models:
        models["miscounted:1"][field] = value
    assert conn.cm.cluster.wait_applied(10), "the supervisor applied the change"
    assert conn.cm.cluster.is_running()
    assert len(replicas_of(conn, "miscounted", 1)) == 1
    assert predict(conn, "miscounted", {"input": [0.0]}).json()["output"] == 1
    conn.set_num_replicas("miscounted", 2)                    # a good count mends the entry
    assert len(replicas_of(conn, "miscounted", 1)) == 2


@pytest.mark.parametrize("refused", [dict(batch_size=0), dict(input_type="tensor")])
def test_a_deploy_the_cluster_refuses_leaves_no_replica_running(conn, refused):
    arguments = {"input_type": "doubles", **refused}
    with pytest.raises(ClipperException):
        python_deployer.deploy_python_closure(conn, "refused", 1, func=version_one, **arguments)
    assert conn.get_model_info("refused", 1) is None
    assert conn.cm.get_num_replicas("refused", 1) == 0
    assert replicas_of(conn, "refused", 1) == []


def test_two_deploys_of_one_version_at_once_leave_it_serving_the_winners_model(conn):
    """The one refused must not stop the replicas the other started, nor have them run its
    model (the last to write the version's replicas decided what they ran: the deploy told
    it had succeeded served the other's function in 3 of 6 rounds of a review)."""
    conn.register_application("raced", "doubles", "-1.0", 2000000)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda func: (_deploy_outcome(conn, "raced", func), func),
                                 [version_one, version_two]))
    assert sorted(outcome for outcome, _ in outcomes) == ["deployed", "refused"], outcomes
    [winner] = [func for outcome, func in outcomes if outcome == "deployed"]
    conn.link_model_to_app("raced", "raced")
    assert replicas_of(conn, "raced", 1) == [0]
    assert predict(conn, "raced", {"input": [0.0]}).json()["output"] == int(winner([0])[0])


def test_a_deploy_of_an_existing_version_leaves_its_model_alone(conn):
    """It was refused only after its build had replaced the version's model on disk: the
    running replicas loaded the new function at their next start."""
    python_deployer.create_endpoint(conn, "kept", "doubles", version_one, slo_micros=2000000)
    with pytest.raises(ClipperException, match="model with name 'kept' and version '1' already exists"):
        python_deployer.deploy_python_closure(conn, "kept", 1, "doubles", version_two)
    conn.set_num_replicas("kept", 0)
    conn.set_num_replicas("kept", 1)                          # a new process loads the model again
    assert predict(conn, "kept", {"input": [0.0]}).json()["output"] == 1


def _deploy_outcome(conn, name, func):
    try:
        python_deployer.deploy_python_closure(conn, name, 1, "doubles", func)
        return "deployed"
    except ClipperException as error:
        assert "already exists" in str(error) or "another client is deploying this version" in str(error), error
        return "refused"


def test_stop_models_and_versioned_models(conn):
    python_deployer.deploy_python_closure(conn, "stoppable", 1, "doubles", version_one)
    python_deployer.deploy_python_closure(conn, "stoppable", 2, "doubles", version_two)
    conn.stop_versioned_models({"stoppable": [1]})
    assert replicas_of(conn, "stoppable", 1) == [] and replicas_of(conn, "stoppable", 2) == [0]
    conn.stop_models(["stoppable"])
    assert replicas_of(conn, "stoppable", 2) == []
    assert not [m for m in conn.get_all_models() if m.startswith("stoppable:")]


def test_build_model_then_deploy_model(conn, tmp_path):
    from clipper_admin.deployers.deployer_utils import save_python_function
    saved = save_python_function("built", version_one)
    image = conn.build_model("built", 1, saved, "default")
    shutil.rmtree(saved)                       # build_model copied it into the cluster
    assert os.path.isfile(os.path.join(image, "func.pkl"))
    conn.deploy_model("built", 1, "doubles", image, num_replicas=2)
    assert len(replicas_of(conn, "built", 1)) == 2
    with pytest.raises(ClipperException, match="a model's image is a model directory holding func.pkl .*"
                                               "To run a Docker image, use DockerContainerManager"):
        conn.deploy_model("built", 2, "doubles", "some/docker-image:1")
    # A string is not a list of packages (pip got it letter by letter): refused before anything.
    with pytest.raises(ClipperException, match=r"pkgs_to_install must be a list of pip requirements.*'six'"):
        conn.build_model("built", 3, image, "default", pkgs_to_install="six")
    with pytest.raises(ClipperException, match=r"pkgs_to_install must be a list"):
        python_deployer.deploy_python_closure(conn, "built", 3, "doubles", version_one, pkgs_to_install="six")
    assert conn.get_model_info("built", 3) is None


def test_a_version_whose_replicas_are_asked_to_run_another_model_restarts_them(conn):
    """Its wanted entry names another model directory (a deploy of the version again after
    one that died half-way): the running replica was kept, and served the old model."""
    from clipper_admin.deployers.deployer_utils import save_python_function
    python_deployer.create_endpoint(conn, "swapped", "doubles", version_one)
    assert predict(conn, "swapped", {"input": [1.0]}).json()["output"] == 1
    other = conn.cm.build_model("swapped", "1", save_python_function("swapped", version_two), "default")
    with conn.cm.cluster.editing_replicas() as wanted:
        wanted["swapped:1"]["model_dir"] = other
    conn.cm._wait_applied()
    wait_for(lambda: predict(conn, "swapped", {"input": [float(time.monotonic())]}).json()["output"] == 2,
             30, "the replica running the model its version now names")


def test_a_version_being_deployed_by_another_client_is_refused_not_taken_over(conn):
    """Two deploys of one version at once: the last to write its replicas decided what they
    ran, and the first to register it was told it had succeeded, serving the other's model."""
    from clipper_admin.deployers.deployer_utils import save_python_function
    first = conn.cm.build_model("contended", "1", save_python_function("contended", version_one), "default")
    second = conn.cm.build_model("contended", "1", save_python_function("contended", version_two), "default")
    conn.cm.deploy_model("contended", "1", "doubles", first)
    with pytest.raises(ClipperException, match="Replicas of model contended:1 are already wanted, for another "
                                               "model directory: another client is deploying this version"):
        conn.cm.deploy_model("contended", "1", "doubles", second)
    assert conn.cm.cluster.wanted_replicas()["models"]["contended:1"]["model_dir"] == first
    conn.cm.stop_models({"contended": ["1"]})          # as the message says
    assert "contended:1" not in conn.cm.cluster.wanted_replicas()["models"]
    conn.cm.deploy_model("contended", "1", "doubles", second)
    conn.cm.stop_models({"contended": ["1"]})


def test_a_failed_build_leaves_no_copy_of_the_model_and_says_why(conn, tmp_path):
    """Each failed pkgs_to_install left a copy of the model in the state directory, and a
    missing model directory was a bare FileNotFoundError."""
    models = conn.cm.cluster.path / "models"
    before = set(models.iterdir())
    with pytest.raises(ClipperException, match="The model directory .*nowhere does not exist"):
        conn.build_model("unbuilt", 1, str(tmp_path / "nowhere"), "default")
    (tmp_path / "model").mkdir()
    with pytest.raises(ClipperException, match="pip could not install"):
        conn.build_model("unbuilt", 1, str(tmp_path / "model"), "default",
                         pkgs_to_install=["--no-index", "no-such-package-anywhere"])
    assert set(models.iterdir()) == before


def test_logs_and_instance(conn, tmp_path):
    paths = conn.get_clipper_logs(str(tmp_path / "logs"))
    names = {os.path.basename(p) for p in paths}
    assert {"test-cluster-query-frontend.log", "test-cluster-management-frontend.log",
            "test-cluster-redis.log", "test-cluster-supervisor.log"} <= names
    assert all(os.path.getsize(p) > 0 for p in paths if "frontend" in p)
    assert "counters" in conn.inspect_instance()


def test_logs_are_never_written_through_a_link_or_into_a_fifo_left_in_the_folder(conn, tmp_path):
    """The folder may be shared: a link planted there under a log's name made the copy
    overwrite the file it pointed to (as 0.4.1's did); a FIFO made a traceback."""
    folder, victim = tmp_path / "shared", tmp_path / "victim"
    folder.mkdir()
    victim.write_text("precious")
    (folder / "test-cluster-query-frontend.log").symlink_to(victim)
    with pytest.raises(ClipperException, match="Cannot write the log .*query-frontend.log: it is a symbolic link, which is not followed"):
        conn.get_clipper_logs(str(folder))
    assert victim.read_text() == "precious"
    other = tmp_path / "other"
    other.mkdir()
    os.mkfifo(other / "test-cluster-management-frontend.log")
    with pytest.raises(ClipperException, match="management-frontend.log: it is not a regular file"):
        conn.get_clipper_logs(str(other))


def test_logs_go_where_0_4_1_put_them(conn, tmp_path, monkeypatch):
    """As 0.4.1: "~" is the home directory (not a directory named "~"), and the paths are absolute."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    home_logs = conn.get_clipper_logs("~/clipper-logs")
    assert home_logs and all(path.startswith(str(tmp_path / "home" / "clipper-logs") + os.sep) for path in home_logs)
    assert all(os.path.isabs(path) for path in conn.get_clipper_logs())      # default: clipper_logs/
    assert not (tmp_path / "~").exists()


def test_predict_function_connects_as_0_4_1_did_and_takes_a_generator(conn):
    """0.4.1 connected to the cluster first (a script could register right after); a function
    that returns a generator deploys and serves, so it passes here too (its outputs could not
    be pickled)."""
    other = ClipperConnection(LocalContainerManager(**{name: getattr(conn.cm, name) for name in (
        "cluster_name", "clipper_query_port", "clipper_management_port", "clipper_rpc_port")}))
    assert other.test_predict_function({"input_batch": [[1.0, 2.0], [3.0]]},
                                       lambda xs: (str(sum(x)) for x in xs), "doubles") == ["3.0", "3.0"]
    assert other.connected and isinstance(other.get_all_apps(), list)    # it connected
    alone = ClipperConnection(LocalContainerManager(cluster_name="no-such-cluster"))
    assert alone.test_predict_function({"input": [1.0]}, lambda xs: [len(x) for x in xs], "doubles") == [1]
    assert not alone.connected


def test_a_replicas_log_says_it_is_serving_as_clippers_docs_tell_users_to_check(conn, tmp_path):
    """python_function_deployment.md: "you should see: Serving predictions for <input_type>
    input type." in the container's log."""
    python_deployer.deploy_python_closure(conn, "logged", 1, "floats", version_one)
    try:
        logs = conn.get_clipper_logs(logging_dir=str(tmp_path))
        model_logs = [path for path in logs if "logged" in os.path.basename(path)]
        assert model_logs, logs
        assert any("Serving predictions for floats input type." in open(path).read() for path in model_logs)
    finally:
        conn.stop_models(["logged"])


def test_predict_function_locally(conn):
    assert conn.test_predict_function({"input": [1.0, 2.0]}, lambda xs: [str(sum(x)) for x in xs],
                                      "doubles") == ["3.0"]
    assert conn.test_predict_function({"input_batch": [[1], [2, 3]]}, lambda xs: [len(x) for x in xs],
                                      "ints") == [1, 2]
    assert conn.test_predict_function({"input": "abc"}, lambda xs: list(xs), "strings") == [b"abc"]
    assert conn.test_predict_function({"input": [1.0]}, version_one, "ints") == "Invalid input type"
    assert conn.test_predict_function({"bogus": [1.0]}, version_one, "doubles") == \
        "Invalid input type or JSON key"


# ---- the user's own modules: files beside the user's script, which a replica cannot import ----
USERS_FILES = {
    "myhelper.py": """
        def scale(x):
            return 10 * x
        """,
    "mymodels.py": """
        import myhelper

        def predict(xs):
            return [str(myhelper.scale(sum(x))) for x in xs]
        """,
    "usermod.py": """
        import myhelper as helper

        def predict(xs, tag="p"):
            return [tag + str(helper.scale(sum(x))) for x in xs]
        """,
    # Where an installed package lies: pickled by reference, as it should be, so a replica
    # without it cannot load the model, and test_predict_function must say so too.
    os.path.join("site-packages", "notinstalled.py"): """
        def predict(xs):
            return [str(len(x)) for x in xs]
        """,
}

# A script's own functions (its module is __main__), as a user writes them.
SCRIPT = """
import mymodels
import myhelper

def calls_mymodels(xs):
    return mymodels.predict(xs)

def calls_helper(xs):
    return [str(myhelper.scale(sum(x)) + 1) for x in xs]

def imports_in_its_body(xs):
    from usermod import helper
    return [str(helper.scale(sum(x)) + 2) for x in xs]

import collections
import types
holders = collections.deque([types.SimpleNamespace(scale=myhelper.scale)])   # objects of installed classes

def reaches_a_module_through_objects(xs):
    return [str(holders[0].scale(sum(x)) + 3) for x in xs]
"""


@pytest.fixture(scope="module")
def users_modules(tmp_path_factory):
    """The user's modules, importable in this process alone: their directory is on sys.path
    here (as a script's directory is), not in the environment a replica inherits; and the
    script's functions, defined in a namespace named __main__."""
    directory = tmp_path_factory.mktemp("users-script")
    for name, text in USERS_FILES.items():
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_text(textwrap.dedent(text))
    paths = [str(directory), str(directory / "site-packages")]
    sys.path[:0] = paths
    try:
        import mymodels
        import notinstalled
        import usermod
        script = {"__name__": "__main__"}
        exec(compile(SCRIPT, str(directory / "script.py"), "exec"), script)
        yield {"mymodels": mymodels, "usermod": usermod, "notinstalled": notinstalled, **script}
    finally:
        for path in paths:
            sys.path.remove(path)
        for name in ("myhelper", "mymodels", "usermod", "notinstalled"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("case, name, expected", [
    ("a module's function using a module beside it", "by-value-module", "30.0"),
    ("a script's function calling a module's", "by-value-main", "30.0"),
    ("a script's function calling a module's helper", "by-value-helper", "31.0"),
    ("a partial of a module's function", "by-value-partial", "q30.0"),
    ("a script's function importing in its body", "by-value-import", "32.0"),
    ("a script's function reaching a module through objects", "by-value-objects", "33.0"),
])
def test_functions_of_the_users_own_modules_deploy_and_run_as_tested(conn, users_modules, case, name, expected):
    """Every module of the user's that the function reaches goes with it, by value: the
    replica (whose sys.path lacks the script's directory) used to exit with code 3, "No
    module named 'myhelper'", while test_predict_function, in this process, said it worked."""
    func = {"a module's function using a module beside it": users_modules["mymodels"].predict,
            "a script's function calling a module's": users_modules["calls_mymodels"],
            "a script's function calling a module's helper": users_modules["calls_helper"],
            "a partial of a module's function": functools.partial(users_modules["usermod"].predict, tag="q"),
            "a script's function importing in its body": users_modules["imports_in_its_body"],
            "a script's function reaching a module through objects": users_modules["reaches_a_module_through_objects"],
            }[case]
    assert conn.test_predict_function({"input": [1.0, 2.0]}, func, "doubles") == [expected]
    python_deployer.create_endpoint(conn, name, "doubles", func, slo_micros=5000000)
    assert str(predict(conn, name, {"input": [1.0, 2.0]}).json()["output"]) == expected   # JSON: 30.0
    conn.stop_models([name])


def test_a_function_a_replica_cannot_load_fails_in_test_predict_function_as_in_the_replica(conn, users_modules):
    """test_predict_function loads the function in a new process, with a replica's sys.path:
    it answered for a function no replica could load. Both now say what may be missing."""
    func = users_modules["notinstalled"].predict
    hint = ("'notinstalled' is a module of your own, or a package: a module of your own is shipped "
            "with the function when")
    with pytest.raises(ClipperException, match="A replica could not load this function: cannot load the "
                                               "model: No module named 'notinstalled' \\(" + hint):
        conn.test_predict_function({"input": [1.0]}, func, "doubles")
    with pytest.raises(ClipperException) as failure:
        python_deployer.deploy_python_closure(conn, "not-shipped", 1, "doubles", func)
    assert "keeps exiting (exit code 3)" in failure.value.msg and hint in failure.value.msg, failure.value.msg
    conn.stop_models(["not-shipped"])


def sum_as_a_number(xs):
    return [sum(x) for x in xs]           # numbers, not strings: the container writes them as text


@pytest.mark.parametrize("input_type, single, batch", [
    ("doubles", [1.1, 2.2, 3.3], [[1.1, 2.2, 3.3], [4.4, 5.5, 6.6]]),
    ("integers", [1, 2, 3], [[1, 2, 3], [40, 50]]),      # the name Clipper's deployer tests use
])
def test_predict_function_answers_as_the_deployed_model(conn, input_type, single, batch):
    """test_test_predict_function: the same function, deployed and queried (at predict/, with
    its trailing slash), answers what test_predict_function returns, input by input."""
    app = f"sum-as-number-{input_type}"
    python_deployer.create_endpoint(conn, app, input_type, sum_as_a_number, slo_micros=2000000)
    url = f"http://{conn.get_query_addr()}/{app}/predict/"
    answer = requests.post(url, json={"input": single}, timeout=10).json()
    assert answer["default"] is False
    assert [answer["output"]] == conn.test_predict_function({"input": single}, sum_as_a_number, input_type)
    answers = requests.post(url, json={"input_batch": batch}, timeout=10).json()["batch_predictions"]
    assert [a["output"] for a in answers] == conn.test_predict_function(
        {"input_batch": batch}, sum_as_a_number, input_type)
    conn.stop_models([app])


def test_predict_function_raises_what_the_function_raises(conn):
    def fails(xs):
        raise KeyError("no such feature")
    with pytest.raises(KeyError, match="no such feature"):
        conn.test_predict_function({"input": [1.0]}, fails, "doubles")


def test_stop_all_model_containers(conn):
    python_deployer.deploy_python_closure(conn, "last", 1, "doubles", version_one)
    conn.stop_all_model_containers()
    assert conn.get_all_model_replicas() == [] and conn.get_all_models() == []
