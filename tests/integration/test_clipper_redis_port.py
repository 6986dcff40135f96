"""Clipper's own Redis and management tests, ported to our cluster and observed from outside.

Sources (ucbrise/clipper, identical at v0.4.1 and develop):
- src/libclipper/test/redis_test.cpp: the Redis layout (databases, keys, hash fields and their
  encodings) and the keyspace events a Clipper component sees. Clipper called its redis.cpp
  helpers directly; here the same state is written the way each Clipper component writes it:
  through our /admin API (the management frontend's writes), by a container that registers as
  Clipper's Python container does (the query frontend's DB 3 writes), or straight into Redis
  with Clipper's commands (a Clipper component sharing the Redis).
- src/management/src/management_frontend_tests.cpp (run by management_tests.cpp, which is only
  its main()): the /admin endpoints, their checks and what they leave in Redis.
- src/libclipper/test/config_test.cpp: what applies to a process started by hand (its flags
  take effect; a negative prediction cache size is refused).

Clipper's tests FLUSHALL between cases; here every test uses its own names on one cluster.
Each check cites the Clipper fact it rests on. Where our README documents a deliberate
difference (docs/protocol.md section 9), the check follows our documented behaviour.
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from clipper.cluster.redis_binary import find_redis_server
from helpers import ROOT, local_cluster, port_open, wait_for

sys.path.insert(0, str(ROOT / "tests" / "compat"))
import clipper_rpc as rpc  # noqa: E402  (Clipper's RPC frames, written independently of ours)

PORTS = dict(query_port=26337, management_port=26338, rpc_port=26700, metric_port=26390)
LABELS = ["ads", "images", "experimental", "other", "labels"]
MODEL_FIELDS = {"model_name", "model_version", "load", "input_type", "labels", "container_name",
                "model_data_path", "batch_size", "valid"}
CONTAINER_FIELDS = {"model_id", "model_name", "model_version", "model_replica_id",
                    "zmq_connection_id", "batch_size", "input_type"}
APP_FIELDS = {"input_type", "policy", "default_output", "latency_slo_micros"}


# ---- the cluster, its Redis, its /admin API ---------------------------------------------------

@pytest.fixture(scope="module")
def conn():
    with local_cluster(name="redis-port", **PORTS) as connection:
        yield connection


@pytest.fixture(scope="module")
def db(conn):
    """db(n): a client of the cluster's Redis on database n (Clipper's RedisDBTable numbers)."""
    url = conn.cm.cluster.settings()["config"]["redis_url"]
    clients = {}

    def client(number):
        if number not in clients:
            clients[number] = redis.Redis.from_url(url, db=number, decode_responses=True)
        return clients[number]
    yield client
    for c in clients.values():
        c.close()


def admin(conn, operation, body):
    """POST /admin/<operation>; ``body`` a dict (sent as JSON) or raw text."""
    url = f"http://{conn.cm.get_admin_addr()}/admin/{operation}"
    if isinstance(body, str):
        return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    return requests.post(url, json=body, timeout=10)


def ok(conn, operation, body):
    response = admin(conn, operation, body)
    assert response.status_code == 200, f"{operation}: {response.status_code} {response.text}"
    return response


def refused(conn, operation, body, *fragments):
    response = admin(conn, operation, body)
    assert response.status_code == 400, f"{operation}: {response.status_code} {response.text}"
    for fragment in fragments:
        assert fragment in response.text, response.text
    return response


def add_app(conn, name, input_type="doubles", default_output="1.0", slo=10000):
    return ok(conn, "add_app", {"name": name, "input_type": input_type,
                                "default_output": default_output, "latency_slo_micros": slo})


def model_body(name, version, input_type="integers", labels=("label1", "label2"),
               container_name="container/name", model_data_path="tmp/model", batch_size=-1):
    return {"model_name": name, "model_version": version, "labels": list(labels),
            "input_type": input_type, "batch_size": batch_size,
            "container_name": container_name, "model_data_path": model_data_path}


def add_model(conn, name, version, **fields):
    return ok(conn, "add_model", model_body(name, version, **fields))


def link(conn, app, model):
    return ok(conn, "add_model_links", {"app_name": app, "model_names": [model]})


def get_json(conn, operation, body):
    return ok(conn, operation, body).json()


def predict(conn, app, payload):
    return requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json=payload, timeout=15)


def wait_for_output(conn, app, expected, timeout=15):
    """Until a prediction of ``app`` answers ``expected`` from the model (not a default)."""
    last = {}

    def answered():
        nonlocal last
        response = predict(conn, app, {"input": [1.0, 2.0]})
        last = response.json() if response.status_code == 200 else {"status": response.status_code,
                                                                    "text": response.text}
        return last.get("output") == expected and last.get("default") is False
    try:
        wait_for(answered, timeout, f"{app} answering {expected!r}", interval=0.1)
    except AssertionError as error:
        raise AssertionError(f"{error}; last answer: {last}") from None


# ---- what Clipper components write straight into Redis (redis.cpp, one HMSET/SET/SADD each) ----

def clipper_add_application(db, name, input_type="doubles", default_output="1.0", slo=10000,
                            policy="DefaultOutputSelectionPolicy"):
    """redis.cpp add_application: HMSET <app> in DB 5."""
    db(5).hset(name, mapping={"input_type": input_type, "policy": policy,
                              "default_output": default_output, "latency_slo_micros": str(slo)})


def clipper_add_model(db, name, version, input_type="doubles", labels=LABELS,
                      container_name="clipper/test_container", path="/tmp/models/m/1", batch_size=-1):
    """redis.cpp add_model: HMSET <name>:<version> in DB 2 (9 fields, 'valid' empty)."""
    db(2).hset(f"{name}:{version}", mapping={
        "model_name": name, "model_version": version, "load": "%f" % 0.0,
        "input_type": input_type, "labels": ",".join(labels), "container_name": container_name,
        "model_data_path": path, "batch_size": str(batch_size), "valid": ""})


def clipper_set_current_version(db, name, version):
    """redis.cpp set_current_model_version: SET CURRENT_MODEL_VERSION:<name> in DB 6."""
    db(6).set(f"CURRENT_MODEL_VERSION:{name}", version)


def clipper_add_container(db, name, version, replica_id, connection_id, input_type="doubles"):
    """redis.cpp add_container, as Clipper's RPC service calls it: HMSET in DB 3, comma key."""
    db(3).hset(f"{name},{version},{replica_id}", mapping={
        "model_id": f"{name}:{version}", "model_name": name, "model_version": version,
        "model_replica_id": str(replica_id), "zmq_connection_id": str(connection_id),
        "batch_size": "1", "input_type": input_type})


# ---- a model container as Clipper's Python container speaks (containers/python/rpc.py) ----

class ClipperContainer(rpc.ContainerThread):
    """Registers as <name>:<version> and answers every input with ``output``."""

    def __init__(self, name, version, output, input_type="doubles", rpc_port=PORTS["rpc_port"]):
        super().__init__(f"tcp://127.0.0.1:{rpc_port}", rpc.new_container(name, version, input_type))
        self.output = output.encode()

    def answer(self, message):
        return [self.output for _ in message["inputs"]]


@pytest.fixture
def containers():
    """start(name, version, output): a Clipper-style container, stopped after the test."""
    started = []

    def start(name, version, output="out", input_type="doubles"):
        container = ClipperContainer(name, version, output, input_type)
        container.start()
        started.append(container)
        return container
    yield start
    for container in started:
        container.stop()
        assert container.error is None, f"the Clipper-style container failed: {container.error!r}"


def replica_listed(conn, name, version, replica_id):
    return f"{name}:{version}:{replica_id}" in get_json(conn, "get_all_containers", {"verbose": False})


# ==== a cluster with nothing registered (run first) ============================================

def test_nothing_registered_lists_empty_arrays(conn):
    """management_frontend_tests.cpp TestGetAllApplicationsVerboseNoneRegisteredCorrect,
    ...NotVerboseNoneRegisteredCorrect; redis_test.cpp GetAllApplicationNamesNoneRegistered:
    the exact body "[]"."""
    for operation in ("get_all_applications", "get_all_models", "get_all_containers"):
        for verbose in (True, False):
            assert admin(conn, operation, {"verbose": verbose}).text == "[]", (operation, verbose)


# ==== redis_test.cpp: the layout our writes leave =============================================

def test_add_model_writes_clipper_model_hash_and_current_version(conn, db):
    """redis_test.cpp AddModel / LabelsToStr; management_frontend_tests.cpp TestAddModelCorrect:
    DB 2 '<name>:<version>' holds exactly 9 fields (redis.cpp add_model), labels joined with ','
    and the new version is current in DB 6 (management_frontend.hpp add_model)."""
    add_model(conn, "rt-m", "1", input_type="ints", labels=LABELS,
              container_name="clipper/test_container", model_data_path="/tmp/models/m/1")
    fields = db(2).hgetall("rt-m:1")
    assert set(fields) == MODEL_FIELDS
    assert fields["model_name"] == "rt-m" and fields["model_version"] == "1"
    assert float(fields["load"]) == 0.0 and fields["load"] == "0.000000"   # std::to_string(0.0)
    assert fields["labels"] == "ads,images,experimental,other,labels"
    assert fields["input_type"] == "integers"          # canonical spelling
    assert fields["container_name"] == "clipper/test_container"
    assert fields["model_data_path"] == "/tmp/models/m/1"
    assert fields["batch_size"] == "-1" and fields["valid"] == ""
    assert db(6).get("CURRENT_MODEL_VERSION:rt-m") == "1"
    assert db(2).type("rt-m:1") == "hash" and db(6).type("CURRENT_MODEL_VERSION:rt-m") == "string"


def test_model_without_labels_is_stored_empty_and_listed_as_one_empty_label(conn, db):
    """redis_test.cpp LabelsToStr (no labels -> ""); redis.cpp str_to_labels("") -> [""]."""
    add_model(conn, "rt-nolabels", "1", labels=())
    assert db(2).hget("rt-nolabels:1", "labels") == ""
    assert get_json(conn, "get_model", {"model_name": "rt-nolabels", "model_version": "1"})["labels"] == [""]


def test_a_label_list_read_back_from_get_model_can_be_registered_again(conn, db):
    """management_frontend.hpp add_model / validate_group_str_for_redis: a label is refused only
    for ',' or ':'; "" is a label Clipper stores. get_model itself answers labels [""] for a
    model registered without labels, so copying a model's labels to a new version sends it."""
    add_model(conn, "rt-copylabels", "1", labels=())
    labels = get_json(conn, "get_model", {"model_name": "rt-copylabels", "model_version": "1"})["labels"]
    assert labels == [""]
    response = admin(conn, "add_model", model_body("rt-copylabels", "2", labels=labels))
    assert response.status_code == 200, response.text
    assert db(2).hget("rt-copylabels:2", "labels") == ""


def test_add_app_writes_clipper_app_hash_and_selection_state(conn, db):
    """redis_test.cpp AddApplication; management_frontend_tests.cpp TestAddApplicationCorrect:
    DB 5 '<app>' holds 4 fields (redis.cpp add_application); the selection state of
    DefaultOutputSelectionPolicy is '{"y_hat":"<default>"}' under '<app>:0:0' in DB 1
    (query_frontend.hpp add_application, selection_policies.cpp serialize)."""
    add_app(conn, "rt-app", "doubles", "1.0", 10000)
    fields = db(5).hgetall("rt-app")
    assert fields == {"input_type": "doubles", "policy": "DefaultOutputSelectionPolicy",
                      "default_output": "1.0", "latency_slo_micros": "10000"}
    assert db(5).type("rt-app") == "hash"
    state = db(1).get("rt-app:0:0")
    assert state == '{"y_hat":"1.0"}'
    add_app(conn, "rt-app-ints", "ints", "4.3", 1000)
    assert db(5).hget("rt-app-ints", "input_type") == "integers"


def test_selection_state_is_clipper_json_for_any_default_output(conn, db):
    """selection_policies.cpp DefaultOutputSelectionState::deserialize reads y_hat back with
    rapidjson: a default output with quotes, backslashes and non-ASCII survives the round trip."""
    default = 'say "hi" \\ naïve – ok'
    add_app(conn, "rt-app-state", "strings", default, 1000)
    assert json.loads(db(1).get("rt-app-state:0:0")) == {"y_hat": default}
    assert admin(conn, "get_state", {"app_name": "rt-app-state", "uid": 0}).text == default


def test_links_are_a_set_of_model_names_in_db7(conn, db):
    """redis_test.cpp AddModelLinks / DeleteModelLinks; management TestAddModelLinkCorrect:
    SADD/SREM '<app>' in DB 7 with model names (not versions)."""
    add_app(conn, "rt-links", "doubles")
    add_model(conn, "rt-linked", "1", input_type="doubles")
    link(conn, "rt-links", "rt-linked")
    assert db(7).type("rt-links") == "set"
    assert db(7).smembers("rt-links") == {"rt-linked"}
    assert ok(conn, "delete_model_links", {"app_name": "rt-links", "model_names": ["rt-linked"]}).text == "Success!"
    assert db(7).smembers("rt-links") == set()
    assert get_json(conn, "get_linked_models", {"app_name": "rt-links"}) == []


def test_links_written_by_a_clipper_component_are_what_get_linked_models_reads(conn, db):
    """redis_test.cpp AddModelLinks adds two model names through redis.cpp add_model_links;
    the management frontend answers SMEMBERS (management_frontend.hpp get_linked_models)."""
    add_app(conn, "rt-links2", "doubles")
    db(7).sadd("rt-links2", "model_1")
    db(7).sadd("rt-links2", "model_2")
    assert sorted(get_json(conn, "get_linked_models", {"app_name": "rt-links2"})) == ["model_1", "model_2"]
    assert sorted(get_json(conn, "get_application", {"name": "rt-links2"})["linked_models"]) == ["model_1", "model_2"]
    db(7).srem("rt-links2", "model_1", "model_2")
    assert get_json(conn, "get_linked_models", {"app_name": "rt-links2"}) == []


def test_current_version_is_a_string_in_db6_that_follows_every_change(conn, db):
    """redis_test.cpp SetCurrentModelVersion (2, 5, 3) and GetModelVersions (1, 2, 4);
    management TestSetModelVersionCorrect."""
    for version in ("1", "2", "4"):
        add_model(conn, "rt-ver", version)
    assert db(6).get("CURRENT_MODEL_VERSION:rt-ver") == "4"
    assert sorted(db(2).keys("rt-ver:*")) == ["rt-ver:1", "rt-ver:2", "rt-ver:4"]
    for version in ("2", "4", "1"):
        assert ok(conn, "set_model_version", {"model_name": "rt-ver", "model_version": version}).text == \
            f"Successfully set model with name 'rt-ver' to version '{version}'"
        assert db(6).get("CURRENT_MODEL_VERSION:rt-ver") == version
        current = [m["model_version"] for m in get_json(conn, "get_all_models", {"verbose": True})
                   if m["model_name"] == "rt-ver" and m["is_current_version"]]
        assert current == [version]


def test_a_version_pointer_written_by_a_clipper_component_is_what_admin_reports(conn, db):
    """redis.cpp set_current_model_version writes DB 6 directly (redis_test.cpp
    SetCurrentModelVersion); is_current_version is read from it (management_frontend.hpp
    get_model). An empty pointer means no version (redis.cpp get_current_model_version)."""
    add_model(conn, "rt-ptr", "1")
    add_model(conn, "rt-ptr", "2")
    clipper_set_current_version(db, "rt-ptr", "1")
    assert get_json(conn, "get_model", {"model_name": "rt-ptr", "model_version": "1"})["is_current_version"] is True
    assert get_json(conn, "get_model", {"model_name": "rt-ptr", "model_version": "2"})["is_current_version"] is False
    clipper_set_current_version(db, "rt-ptr", "")
    assert not any(m["is_current_version"] for m in get_json(conn, "get_all_models", {"verbose": True})
                   if m["model_name"] == "rt-ptr")
    add_app(conn, "rt-ptr-app", "integers")
    refused(conn, "add_model_links", {"app_name": "rt-ptr-app", "model_names": ["rt-ptr"]},
            "No model with name 'rt-ptr' exists.")


def test_all_models_and_model_names(conn, db):
    """redis_test.cpp GetAllModelNames / GetAllModels: m:1, m:2, n:3 are three versions of two
    models, listed '<name>:<version>' (management_frontend.hpp get_all_models)."""
    add_model(conn, "rt-all-m", "1")
    add_model(conn, "rt-all-m", "2")
    add_model(conn, "rt-all-n", "3")
    listed = [k for k in get_json(conn, "get_all_models", {"verbose": False}) if k.startswith("rt-all-")]
    assert sorted(listed) == ["rt-all-m:1", "rt-all-m:2", "rt-all-n:3"]
    assert sorted(k for k in db(2).keys("rt-all-*")) == sorted(listed)
    verbose = [(m["model_name"], m["model_version"]) for m in get_json(conn, "get_all_models", {"verbose": True})
               if m["model_name"].startswith("rt-all-")]
    assert sorted(verbose) == [("rt-all-m", "1"), ("rt-all-m", "2"), ("rt-all-n", "3")]
    assert {k.split(":")[0] for k in listed} == {"rt-all-m", "rt-all-n"}


def test_a_model_written_by_a_clipper_component_is_listed_and_described(conn, db):
    """A model hash as redis.cpp add_model writes it (redis_test.cpp AddModel) is what
    get_model / get_all_models describe (json_util.cpp redis_model_metadata_to_json)."""
    clipper_add_model(db, "rt-direct", "7", input_type="ints")
    clipper_set_current_version(db, "rt-direct", "7")
    assert get_json(conn, "get_model", {"model_name": "rt-direct", "model_version": "7"}) == {
        "model_name": "rt-direct", "model_version": "7", "input_type": "ints",
        "labels": LABELS, "container_name": "clipper/test_container",
        "model_data_path": "/tmp/models/m/1", "is_current_version": True}
    assert "rt-direct:7" in get_json(conn, "get_all_models", {"verbose": False})


def test_delete_versioned_model_leaves_no_valid_model(conn, db):
    """redis_test.cpp DeleteModel; management TestDeleteVersionedModelCorrect: after the delete
    the hash has no 'valid' field (ours removes the whole hash and, if current, the pointer:
    docs/protocol.md 9.4)."""
    add_model(conn, "rt-del", "1")
    assert len(db(2).hgetall("rt-del:1")) == 9
    assert ok(conn, "delete_versioned_model", {"model_name": "rt-del", "model_version": "1"}).text == \
        "Successfully deleted model with name 'rt-del' and version '1'"
    assert "valid" not in db(2).hgetall("rt-del:1")
    assert get_json(conn, "get_model", {"model_name": "rt-del", "model_version": "1"}) == {}
    assert not any(m["model_name"] == "rt-del" for m in get_json(conn, "get_all_models", {"verbose": True}))


def test_delete_app_removes_the_app_hash(conn, db):
    """redis_test.cpp DeleteApplication; management TestDeleteApplicationCorrect: DB 5 hash gone,
    get_application answers exactly '{}'."""
    add_app(conn, "rt-delapp", "integers", "4.3", 1000)
    assert len(db(5).hgetall("rt-delapp")) == 4
    assert ok(conn, "delete_app", {"name": "rt-delapp"}).text == "Successfully deleted application with name 'rt-delapp'"
    assert db(5).hgetall("rt-delapp") == {}
    assert admin(conn, "get_application", {"name": "rt-delapp"}).text == "{}"
    assert "rt-delapp" not in get_json(conn, "get_all_applications", {"verbose": False})


def test_all_application_names(conn, db):
    """redis_test.cpp GetAllApplicationNames: two apps written by Clipper's add_application
    (with policies other than the default) are both listed."""
    clipper_add_application(db, "rt-names-1", policy="exp3_policy")
    clipper_add_application(db, "rt-names-2", slo=50000, policy="exp4_policy")
    names = get_json(conn, "get_all_applications", {"verbose": False})
    assert {"rt-names-1", "rt-names-2"} <= set(names)
    assert sorted(db(5).keys("rt-names-*")) == ["rt-names-1", "rt-names-2"]
    documents = {a["name"]: a for a in get_json(conn, "get_all_applications", {"verbose": True})}
    assert documents["rt-names-2"] == {"input_type": "doubles", "default_output": "1.0",
                                       "latency_slo_micros": 50000, "name": "rt-names-2",
                                       "linked_models": []}


# ---- containers (DB 3) ----

def test_registered_container_is_a_clipper_container_hash_under_a_comma_key(conn, db, containers):
    """redis_test.cpp AddContainer / ParseModelReplicaKey: the RPC service writes
    '<name>,<version>,<replica>' in DB 3 with 7 fields, batch_size 1, canonical input type
    (redis.cpp add_container, rpc_service.cpp); replica ids count from 0 per model version.
    get_all_containers lists '<name>:<version>:<replica>' (management_frontend.hpp)."""
    containers("model1", "4")
    wait_for(lambda: replica_listed(conn, "model1", "4", 0), 15, "replica model1:4:0 listed")
    fields = db(3).hgetall("model1,4,0")
    assert set(fields) == CONTAINER_FIELDS
    assert fields["model_id"] == "model1:4"
    assert fields["model_name"] == "model1" and fields["model_version"] == "4"
    assert fields["model_replica_id"] == "0" and fields["batch_size"] == "1"
    assert fields["input_type"] == "doubles"
    assert int(fields["zmq_connection_id"]) >= 0
    containers("model1", "4")
    wait_for(lambda: replica_listed(conn, "model1", "4", 1), 15, "replica model1:4:1 listed")
    assert set(db(3).hgetall("model1,4,1")) == CONTAINER_FIELDS
    assert int(db(3).hget("model1,4,1", "zmq_connection_id")) != int(fields["zmq_connection_id"])
    assert get_json(conn, "get_container", {"model_name": "model1", "model_version": "4", "replica_id": 1}) == {
        "model_id": "model1:4", "model_name": "model1", "model_version": "4",
        "model_replica_id": 1, "input_type": "doubles"}


def test_containers_written_by_clipper_rpc_service_are_listed(conn, db):
    """redis_test.cpp AddContainer (replica 4, connection 12) and GetAllContainers (m:1:0, m:1:1,
    other_model:3:0): whatever is in DB 3 is what get_container / get_all_containers answer
    (management_frontend.hpp, json_util.cpp redis_container_metadata_to_json)."""
    clipper_add_container(db, "rt-c", "1", 4, 12)
    assert get_json(conn, "get_container", {"model_name": "rt-c", "model_version": "1", "replica_id": 4}) == {
        "model_id": "rt-c:1", "model_name": "rt-c", "model_version": "1",
        "model_replica_id": 4, "input_type": "doubles"}
    clipper_add_container(db, "rt-c", "1", 0, 0)
    clipper_add_container(db, "rt-c", "1", 1, 1)
    clipper_add_container(db, "rt_other_model", "3", 0, 2)
    listed = get_json(conn, "get_all_containers", {"verbose": False})
    assert {"rt-c:1:0", "rt-c:1:1", "rt-c:1:4", "rt_other_model:3:0"} <= set(listed)
    verbose = [c for c in get_json(conn, "get_all_containers", {"verbose": True})
               if c["model_name"] in ("rt-c", "rt_other_model")]
    assert sorted((c["model_id"], c["model_replica_id"]) for c in verbose) == [
        ("rt-c:1", 0), ("rt-c:1", 1), ("rt-c:1", 4), ("rt_other_model:3", 0)]
    # redis_test.cpp DeleteContainer: DEL of the key and the container is gone.
    for key in ("rt-c,1,0", "rt-c,1,1", "rt-c,1,4", "rt_other_model,3,0"):
        assert db(3).delete(key) == 1
    assert get_json(conn, "get_container", {"model_name": "rt-c", "model_version": "1", "replica_id": 4}) == {}
    assert not any(c.startswith(("rt-c:", "rt_other_model:")) for c in
                   get_json(conn, "get_all_containers", {"verbose": False}))


def test_a_container_that_goes_away_is_removed_from_db3(conn, db, containers):
    """redis_test.cpp DeleteContainer; rpc_service.cpp: an inactive container's DB 3 key is
    deleted (Clipper: within 30-40 s of silence; ours at once, docs/protocol.md 9.6)."""
    container = containers("rt-gone", "1")
    wait_for(lambda: replica_listed(conn, "rt-gone", "1", 0), 15, "replica listed")
    container.stop()
    wait_for(lambda: not db(3).exists("rt-gone,1,0"), 45, "the container's DB 3 key deleted")
    assert not replica_listed(conn, "rt-gone", "1", 0)


# ---- keyspace events a Clipper component subscribes to (redis_test.cpp Subscription*) ----

class KeyspaceEvents:
    """PSUBSCRIBE __keyspace@<db>__:* as redis.cpp subscribe_to_keyspace_changes does."""

    def __init__(self, db):
        self.pubsub = db(0).pubsub()
        self.pubsub.psubscribe(*(f"__keyspace@{n}__:*" for n in (1, 2, 3, 5, 6, 7)))
        self.seen = []
        time.sleep(0.5)     # as Clipper's tests: give Redis time to register the subscription

    def wait(self, db_number, key, events, timeout=5):
        """The next event on ``key`` of DB ``db_number`` (each is taken once); it must be one of
        ``events``."""
        channel = f"__keyspace@{db_number}__:{key}"
        deadline = time.monotonic() + timeout
        for index, (seen_channel, event) in enumerate(self.seen):
            if seen_channel == channel:         # an event read while waiting for another
                del self.seen[index]
                assert event in events, (channel, event)
                return event
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "pmessage":
                if message["channel"] == channel:
                    assert message["data"] in events, (channel, message["data"])
                    return message["data"]
                self.seen.append((message["channel"], message["data"]))
        raise AssertionError(f"no event on {channel} within {timeout} s; saw {self.seen[-10:]}")

    def close(self):
        self.pubsub.close()


@pytest.fixture
def events(db):
    subscription = KeyspaceEvents(db)
    yield subscription
    subscription.close()


def test_keyspace_events_are_enabled_as_clipper_enables_them(db):
    """task_executor.hpp: CONFIG SET notify-keyspace-events AKE (Clipper's components rely on
    keyspace events of every kind)."""
    flags = db(0).config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert "K" in flags and ("A" in flags or {"g", "$", "h", "s"} <= set(flags)), flags


def test_subscription_detects_application_add_and_delete(conn, events):
    """redis_test.cpp SubscriptionDetectApplicationAdd ('hset' on '<app>' in DB 5) and
    SubscriptionDetectApplicationDelete ('hdel' or 'del')."""
    add_app(conn, "rt-ev-app")
    events.wait(5, "rt-ev-app", {"hset"})
    ok(conn, "delete_app", {"name": "rt-ev-app"})
    events.wait(5, "rt-ev-app", {"hdel", "del"})


def test_subscription_detects_model_add_delete_and_version_changes(conn, events):
    """redis_test.cpp SubscriptionDetectModelAdd ('hset' on '<name>:<version>' in DB 2),
    SubscriptionDetectModelVersionAdd / ...Change ('set' on CURRENT_MODEL_VERSION:<name> in
    DB 6), SubscriptionDetectModelDelete ('hdel' or 'del')."""
    add_model(conn, "rt-ev-m", "1")
    events.wait(2, "rt-ev-m:1", {"hset"})
    events.wait(6, "CURRENT_MODEL_VERSION:rt-ev-m", {"set"})
    events.seen.clear()
    add_model(conn, "rt-ev-m", "2")
    events.wait(2, "rt-ev-m:2", {"hset"})
    events.wait(6, "CURRENT_MODEL_VERSION:rt-ev-m", {"set"})
    events.seen.clear()
    ok(conn, "set_model_version", {"model_name": "rt-ev-m", "model_version": "1"})
    events.wait(6, "CURRENT_MODEL_VERSION:rt-ev-m", {"set"})
    events.seen.clear()
    ok(conn, "delete_versioned_model", {"model_name": "rt-ev-m", "model_version": "2"})
    events.wait(2, "rt-ev-m:2", {"hdel", "del"})


def test_subscription_detects_model_links_add(conn, events):
    """redis_test.cpp SubscriptionDetectModelLinksAdd: 'sadd' on '<app>' in DB 7."""
    add_app(conn, "rt-ev-links", "integers")
    add_model(conn, "rt-ev-linked", "1")
    link(conn, "rt-ev-links", "rt-ev-linked")
    events.wait(7, "rt-ev-links", {"sadd"})


def test_subscription_detects_container_add_and_delete(conn, events, containers):
    """redis_test.cpp SubscriptionDetectContainerAdd ('hset' on '<name>,<version>,<replica>' in
    DB 3) and SubscriptionDetectContainerDelete ('hdel' or 'del')."""
    container = containers("rt-ev-c", "1")
    events.wait(3, "rt-ev-c,1,0", {"hset"}, timeout=15)
    container.stop()
    events.wait(3, "rt-ev-c,1,0", {"hdel", "del"}, timeout=45)


def test_layout_holds_only_clipper_keys_in_clipper_databases(conn, db):
    """constants.hpp RedisDBTable: DB 1 state '<app>:0:0' strings, DB 2 model hashes
    '<name>:<version>', DB 3 container hashes with two commas, DB 4 unused, DB 5 app hashes,
    DB 6 'CURRENT_MODEL_VERSION:<name>' strings, DB 7 sets (ours adds only DB 0 keys,
    docs/protocol.md 4.1)."""
    for key in db(1).keys("*"):
        assert key.endswith(":0:0") and db(1).type(key) == "string", key
    for key in db(2).keys("*"):
        assert key.count(":") == 1 and db(2).type(key) == "hash", key
    for key in db(3).keys("*"):
        assert key.count(",") == 2 and db(3).type(key) == "hash", key
    assert db(4).keys("*") == []
    for key in db(5).keys("*"):
        assert db(5).type(key) == "hash", key
    for key in db(6).keys("*"):
        assert key.startswith("CURRENT_MODEL_VERSION:") and db(6).type(key) == "string", key
    for key in db(7).keys("*"):
        assert db(7).type(key) == "set", key


# ==== Clipper components writing into Redis directly: the query frontend follows =============

def test_app_model_link_and_version_written_into_redis_are_served(conn, db, containers):
    """query_frontend.hpp / task_executor.hpp: the query frontend learns apps (DB 5 'hset'),
    links (DB 7 'sadd'), current versions (DB 6 'set') and models (DB 2 'hset') from
    keyspace events, whoever wrote them (redis_test.cpp Subscription* write through redis.cpp)."""
    clipper_add_application(db, "rt-direct-app", "doubles", "direct-default", 5_000_000)
    clipper_add_model(db, "rt-dm", "1")
    clipper_set_current_version(db, "rt-dm", "1")
    db(7).sadd("rt-direct-app", "rt-dm")
    containers("rt-dm", "1", "direct-1")
    wait_for(lambda: replica_listed(conn, "rt-dm", "1", 0), 15, "replica listed")
    wait_for_output(conn, "rt-direct-app", "direct-1")
    assert get_json(conn, "get_linked_models", {"app_name": "rt-direct-app"}) == ["rt-dm"]


def test_a_version_change_written_into_redis_is_followed(conn, db, containers):
    """SubscriptionDetectModelVersionChange: SET CURRENT_MODEL_VERSION:<name> in DB 6 moves
    the app's queries to that version (query_frontend.hpp, DB 6 'set' -> re-read the version);
    management TestSetModelVersionCorrect moves them back."""
    add_app(conn, "rt-vc-app", "doubles", "vc-default", 5_000_000)
    add_model(conn, "rt-vc", "1", input_type="doubles")
    link(conn, "rt-vc-app", "rt-vc")
    containers("rt-vc", "1", "vc-1")
    containers("rt-vc", "2", "vc-2")
    wait_for(lambda: replica_listed(conn, "rt-vc", "1", 0) and replica_listed(conn, "rt-vc", "2", 0),
             15, "both replicas listed")
    wait_for_output(conn, "rt-vc-app", "vc-1")
    clipper_add_model(db, "rt-vc", "2")
    clipper_set_current_version(db, "rt-vc", "2")
    wait_for_output(conn, "rt-vc-app", "vc-2")
    ok(conn, "set_model_version", {"model_name": "rt-vc", "model_version": "1"})
    wait_for_output(conn, "rt-vc-app", "vc-1", timeout=2)


def test_an_app_deleted_in_redis_stops_being_served(conn, db):
    """SubscriptionDetectApplicationDelete: a 'del' on DB 5 reaches the query frontend. Clipper
    kept serving (pitfall 9); ours stops (docs/protocol.md 9.4), which is what this checks."""
    clipper_add_application(db, "rt-del-direct", "doubles", "0.5", 100000)
    wait_for(lambda: predict(conn, "rt-del-direct", {"input": [1.0]}).status_code == 200, 5, "app served")
    db(5).delete("rt-del-direct")
    wait_for(lambda: predict(conn, "rt-del-direct", {"input": [1.0]}).status_code == 404, 5, "app unserved")
    assert "rt-del-direct" not in get_json(conn, "get_all_applications", {"verbose": False})


def test_a_model_marked_invalid_as_clipper_marks_it_is_removed(conn, db):
    """Clipper's delete protocol: the management frontend only HDELs 'valid'
    (redis.cpp mark_versioned_model_for_delete); the query frontend, on that 'hdel', deletes the
    version: clean_up_specific_model -> redis.cpp delete_versioned_model (DEL of the hash)
    (task_executor.hpp, model 'hdel' branch). After it, the version is not listed, and it can be
    registered again (management TestDeleteVersionedModelForInvalidModel's state, cleaned)."""
    add_model(conn, "rt-hdel", "1")
    add_model(conn, "rt-hdel", "2")
    assert db(2).hdel("rt-hdel:1", "valid") == 1
    wait_for(lambda: not db(2).exists("rt-hdel:1"), 5, "the query frontend deleting the invalid version")
    assert "rt-hdel:1" not in get_json(conn, "get_all_models", {"verbose": False})
    assert sorted(db(2).keys("rt-hdel:*")) == ["rt-hdel:2"]
    add_model(conn, "rt-hdel", "1")


def test_a_model_marked_invalid_is_listed_consistently(conn, db):
    """management_frontend.hpp get_all_models: verbose and non-verbose list the same versions
    (both walk KEYS * of DB 2), whatever state a version's hash is in."""
    add_model(conn, "rt-inv", "1")
    db(2).hdel("rt-inv:1", "valid")
    time.sleep(1.0)
    plain = [k for k in get_json(conn, "get_all_models", {"verbose": False}) if k.startswith("rt-inv:")]
    verbose = ["%s:%s" % (m["model_name"], m["model_version"])
               for m in get_json(conn, "get_all_models", {"verbose": True}) if m["model_name"] == "rt-inv"]
    assert plain == verbose


def test_deleting_a_version_removes_its_connected_replicas_from_db3(conn, db, containers):
    """task_executor.hpp, model 'hdel' branch: for every DB 3 container of the deleted version,
    clean_up_specific_container DELs its key (redis.cpp delete_container) and drops the replica.
    So after /admin/delete_versioned_model a running Clipper lists no replica of that version."""
    add_model(conn, "rt-delrep", "1", input_type="doubles")
    add_model(conn, "rt-delrep", "2", input_type="doubles")
    containers("rt-delrep", "1", "x")
    wait_for(lambda: replica_listed(conn, "rt-delrep", "1", 0), 15, "replica listed")
    ok(conn, "delete_versioned_model", {"model_name": "rt-delrep", "model_version": "1"})
    wait_for(lambda: not db(3).exists("rt-delrep,1,0"), 5, "the deleted version's container key removed")
    assert not replica_listed(conn, "rt-delrep", "1", 0)


def test_a_version_registered_again_for_other_code_is_not_served_by_the_deleted_versions_replica(
        conn, db, containers):
    """The replica of a deleted version stays connected (Clipper's did too) and is not
    asked to register again for a registration of other code (another container image):
    the version gets no answer from it, only the default, until a new replica connects."""
    add_app(conn, "rt-again", "doubles", "dflt", 5_000_000)
    add_model(conn, "rt-again", "1", input_type="doubles", container_name="image:old")
    link(conn, "rt-again", "rt-again")
    containers("rt-again", "1", "old code")
    wait_for_output(conn, "rt-again", "old code")
    ok(conn, "delete_versioned_model", {"model_name": "rt-again", "model_version": "1"})
    add_model(conn, "rt-again", "1", input_type="doubles", container_name="image:new")
    time.sleep(2.5)                 # the old container heartbeats every second meanwhile
    assert not replica_listed(conn, "rt-again", "1", 0)
    answer = predict(conn, "rt-again", {"input": [1.0, 2.0]}).json()
    assert answer["default"] is True and answer["output"] == "dflt", answer
    containers("rt-again", "1", "new code")
    wait_for_output(conn, "rt-again", "new code")


def test_a_replica_of_another_input_type_than_its_version_is_never_listed(conn, db, containers):
    """Whether it connects before its version is registered or after, a container that takes
    ints for a version registered for doubles is not a replica of it (its inputs would be
    misread); one of the right type is."""
    add_app(conn, "rt-typed", "doubles", "dflt", 5_000_000)
    early = ClipperContainer("rt-typed", "1", "early", input_type="ints")
    early.start()
    try:
        wait_for(lambda: replica_listed(conn, "rt-typed", "1", 0), 15, "the early container registering")
        add_model(conn, "rt-typed", "1", input_type="doubles")
        link(conn, "rt-typed", "rt-typed")
        wait_for(lambda: not replica_listed(conn, "rt-typed", "1", 0), 5, "the mistyped replica dropped")
        containers("rt-typed", "1", "late-ints", input_type="ints")
        containers("rt-typed", "1", "right")
        wait_for_output(conn, "rt-typed", "right")
        assert [r for r in get_json(conn, "get_all_containers", {"verbose": False})
                if r.startswith("rt-typed:")] == ["rt-typed:1:0"]
        for _ in range(10):
            answer = predict(conn, "rt-typed", {"input": [1.0, 2.0]}).json()
            assert answer["output"] == "right", answer
    finally:
        early.stop()


def test_a_local_version_registered_again_as_it_was_is_served_by_its_running_replicas(conn):
    """Deleting a version and registering it again as it was (over REST: the way to change its
    batch size) leaves the local backend's replicas running: they must serve it again, not
    sit retired while the version answers only its default."""
    from clipper_admin.deployers import python as python_deployer
    from helpers import total
    python_deployer.create_endpoint(conn, "rt-again-local", "doubles", total, default_output="dflt",
                                    slo_micros=5_000_000)
    try:
        wait_for_output(conn, "rt-again-local", 3.0)
        info = conn.get_model_info("rt-again-local", "1")
        ok(conn, "delete_versioned_model", {"model_name": "rt-again-local", "model_version": "1"})
        conn.register_model("rt-again-local", "1", "doubles", image=info["container_name"],
                            labels=info["labels"], batch_size=8)
        wait_for_output(conn, "rt-again-local", 3.0)
        assert replica_listed(conn, "rt-again-local", "1", 0)
    finally:
        conn.unregister_application("rt-again-local")
        conn.stop_models(["rt-again-local"])


# ==== management_frontend_tests.cpp ===========================================================

def test_add_application_checks(conn, db):
    """TestAddApplicationMissingField, TestAddApplicationMalformedJson, TestAddDuplicateApplication."""
    refused(conn, "add_app", '{"name": "mf-app", "input_type": "integers", "latency_slo_micros": 10000}',
            "Error parsing JSON", "JSON object does not have required key: default_output")
    refused(conn, "add_app", '\n  {\n    "name": "myappname,\n    "input_type "integers",\n'
            '    "selection_policy":,\n    "latency_slo_micros": 10000\n  ', "Error parsing JSON")
    assert not db(5).exists("mf-app")
    add_app(conn, "mf-app", "integers", "4.3", 1000)
    assert len(db(5).hgetall("mf-app")) == 4
    refused(conn, "add_app", {"name": "mf-app", "input_type": "integers", "default_output": "4.3",
                              "latency_slo_micros": 1000}, "application 'mf-app' already exists")


def test_get_application(conn):
    """TestGetApplicationCorrect, TestGetNonexistentApplicationCorrect, TestGetApplicationMalformedJson."""
    add_app(conn, "mf-get", "doubles", "my_default_output", 10000)
    assert get_json(conn, "get_application", {"name": "mf-get"}) == {
        "input_type": "doubles", "default_output": "my_default_output", "latency_slo_micros": 10000,
        "name": "mf-get", "linked_models": []}
    add_model(conn, "mf-get-model", "4", input_type="doubles", container_name="container/name",
              model_data_path="tmp/model")
    link(conn, "mf-get", "mf-get-model")
    assert get_json(conn, "get_application", {"name": "mf-get"})["linked_models"] == ["mf-get-model"]
    assert admin(conn, "get_application", {"name": "nonexistent_app"}).text == "{}"
    refused(conn, "get_application", '\n  {\n    "app": not a string\n  }\n  ', "Error parsing JSON")


def test_get_all_applications(conn):
    """TestGetAllApplicationsVerboseCorrect, TestGetAllApplicationsNotVerboseCorrect,
    TestGetAllApplicationsMalformedJson."""
    add_app(conn, "mf-all-1", "doubles", "1.0", 10000)
    add_app(conn, "mf-all-2", "doubles", "1.0", 10000)
    add_model(conn, "mf-all-model", "4", input_type="doubles")
    link(conn, "mf-all-1", "mf-all-model")
    documents = {a["name"]: a for a in get_json(conn, "get_all_applications", {"verbose": True})}
    assert documents["mf-all-1"] == {"input_type": "doubles", "default_output": "1.0",
                                     "latency_slo_micros": 10000, "name": "mf-all-1",
                                     "linked_models": ["mf-all-model"]}
    assert documents["mf-all-2"]["linked_models"] == []
    assert {"mf-all-1", "mf-all-2"} <= set(get_json(conn, "get_all_applications", {"verbose": False}))
    refused(conn, "get_all_applications", '\n   {\n     "verbose": flalse\n   }\n   ', "Error parsing JSON")


def test_add_model_checks(conn, db):
    """TestAddDuplicateModelVersion, TestAddModelMissingField, TestAddModelMalformedJson,
    TestAddLinkedModelCompatibleInputType ('ints' is 'integers')."""
    add_model(conn, "mf-model", "4", input_type="integers", labels=("label1", "label2", "label3"),
              container_name="clipper/sklearn_cifar", model_data_path="/tmp/model/repo/m/4")
    assert len(db(2).hgetall("mf-model:4")) == 9
    assert db(6).get("CURRENT_MODEL_VERSION:mf-model") == "4"
    refused(conn, "add_model", model_body("mf-model", "4", input_type="doubles", labels=("label1", "label5")),
            "model with name 'mf-model' and version '4' already exists")
    assert db(2).hget("mf-model:4", "input_type") == "integers"
    refused(conn, "add_model", {"model_name": "mf-model", "model_version": "5",
                                "labels": ["label1", "label2", "label3"]}, "Error parsing JSON")
    refused(conn, "add_model", '\n    "model_name": "mymodelname\n    "model_version": 4\n'
            '    "labels": ["label1", "label2", "label3"\n  ', "Error parsing JSON")
    add_app(conn, "mf-model-app", "integers", "4.3", 1000)
    link(conn, "mf-model-app", "mf-model")
    assert ok(conn, "add_model", model_body("mf-model", "6", input_type="ints", labels=("label1", "label5"),
                                            container_name="clipper/other_container")).text == \
        "Successfully added model with name 'mf-model' and input type 'integers'"
    assert db(6).get("CURRENT_MODEL_VERSION:mf-model") == "6"


def test_add_model_prohibited_chars(conn, db):
    """TestAddModelProhibitedChars: ':' in the name, ',' in the version, a label with both."""
    base = model_body("my_app_name", "my_model_version", input_type="doubles",
                      container_name="example/container_name", model_data_path="/example/model/data/path")
    refused(conn, "add_model", {**base, "model_name": "my_app_name:"},
            "Invalid model name supplied: my_app_name:. Contains one of: ',', ':'")
    refused(conn, "add_model", {**base, "model_version": ",my_model_version"},
            "Invalid model version supplied: ,my_model_version. Contains one of: ',', ':'")
    refused(conn, "add_model", {**base, "labels": ["label1", ":label,"]},
            "Invalid label supplied: :label,. Contains one of: ',', ':'")
    assert db(2).keys("my_app_name*") == []
    ok(conn, "add_model", base)
    assert len(db(2).hgetall("my_app_name:my_model_version")) == 9


@pytest.mark.parametrize("operation, body, message", [
    # json_util.cpp get_int: a key that is not a number fails check_kv_type_and_return
    # (kNumberType, "Number"); a number that is not an int32 (1.5, 2**40) fails IsInt.
    ("add_app", {"latency_slo_micros": "100"},
     "Type mismatch! JSON key latency_slo_micros expected type Number but found type String"),
    ("add_app", {"latency_slo_micros": True},
     "Type mismatch! JSON key latency_slo_micros expected type Number but found type True"),
    ("add_app", {"latency_slo_micros": 1.5}, "PredictionData of type Number is not of type int"),
    ("add_app", {"latency_slo_micros": 2 ** 40}, "PredictionData of type Number is not of type int"),
    ("add_model", {"batch_size": "4"},
     "Type mismatch! JSON key batch_size expected type Number but found type String"),
    ("add_model", {"batch_size": 4.0}, "PredictionData of type Number is not of type int"),
    # json_util.cpp get_string_array: "Array input of type <T> is not of type string".
    ("add_model", {"labels": ["a", 1]}, "Array input of type Number is not of type string"),
    ("add_model_links", {"model_names": [None]}, "Array input of type Null is not of type string"),
    # check_document_is_object_and_key_exists: a body that is JSON but not an object.
    ("add_app", ["not", "an", "object"], "Can only get key-value pair from an object"),
    ("get_all_applications", [True], "Can only get key-value pair from an object"),
])
def test_wrongly_typed_fields_are_refused_with_clippers_messages(conn, operation, body, message):
    """management_frontend.hpp reads add_app's latency_slo_micros and add_model's batch_size with
    get_int, labels and model_names with get_string_array; json_util.cpp words the refusals
    (TestAddApplicationMissingField / TestAddModelMissingField throw the same json_semantic_error
    type). Ours adds a space before "but" (docs/protocol.md 2.6) and may add a reason in brackets."""
    bases = {"add_app": {"name": "mf-typed", "input_type": "doubles", "default_output": "1.0",
                         "latency_slo_micros": 1000},
             "add_model": model_body("mf-typed", "1"),
             "add_model_links": {"app_name": "mf-typed", "model_names": ["mf-typed"]}}
    document = {**bases[operation], **body} if isinstance(body, dict) else body
    text = refused(conn, operation, document).text
    assert text.startswith("Error parsing JSON: ") and ". Expected JSON schema: " in text, text
    reason = text[len("Error parsing JSON: "):text.index(". Expected JSON schema: ")]
    assert reason == message or reason.startswith(message + " ("), text


def test_set_model_version_checks(conn, db):
    """TestSetVersionNonexistentModel, TestSetModelInvalidVersion (the pointer is unchanged)."""
    refused(conn, "set_model_version", {"model_name": "mf-sv", "model_version": "1"},
            "Cannot set version for nonexistent model 'mf-sv'")
    for version in ("1", "2", "4"):
        add_model(conn, "mf-sv", version, input_type="ints", labels=("ads", "images"))
    refused(conn, "set_model_version", {"model_name": "mf-sv", "model_version": "11"},
            "Cannot set non-existent version '11' for model with name 'mf-sv'")
    assert db(6).get("CURRENT_MODEL_VERSION:mf-sv") == "4"


def test_linked_model_input_type_checks(conn, db):
    """TestAddModelLinkIncompatibleInputType, TestAddNewLinkedModelIncompatibleInputType,
    TestSetModellVersionForLinkedModelIncompatibleInputType."""
    add_app(conn, "mf-it", "integers", "4.3", 1000)
    add_model(conn, "mf-it-doubles", "4", input_type="doubles")
    refused(conn, "add_model_links", {"app_name": "mf-it", "model_names": ["mf-it-doubles"]},
            "Model with name 'mf-it-doubles' has incompatible input_type 'doubles'. "
            "Requested app to link to has input_type 'integers'.")
    assert db(7).smembers("mf-it") == set()
    add_model(conn, "mf-it-m", "1", input_type="doubles")
    add_model(conn, "mf-it-m", "2", input_type="integers")
    link(conn, "mf-it", "mf-it-m")
    refused(conn, "add_model", model_body("mf-it-m", "3", input_type="doubles"),
            "Model with name 'mf-it-m' is already linked to app 'mf-it' using input type 'integers'. "
            "The input type you provided for a new version of the model, 'doubles', is not compatible.")
    assert not db(2).exists("mf-it-m:3")
    refused(conn, "set_model_version", {"model_name": "mf-it-m", "model_version": "1"},
            "is already linked to app 'mf-it' using input type 'integers'")
    assert db(6).get("CURRENT_MODEL_VERSION:mf-it-m") == "2"


def test_model_link_checks(conn, db):
    """TestAddModelLinkWithNonexistentModel, TestAddModelLinkWhenAlreadyExists,
    TestAddModelLinkToNonexistentApp, TestAddModelLinkMalformedJson, TestAddModelLinkMissingField."""
    add_app(conn, "mf-ln", "integers", "4.3", 1000)
    refused(conn, "add_model_links", {"app_name": "mf-ln", "model_names": ["mf-ln-ghost"]},
            "No model with name 'mf-ln-ghost' exists.")
    add_model(conn, "mf-ln-m", "4")
    link(conn, "mf-ln", "mf-ln-m")
    refused(conn, "add_model_links", {"app_name": "mf-ln", "model_names": ["mf-ln-m"]},
            "The model with name 'mf-ln-m' is already linked to 'mf-ln'")
    refused(conn, "add_model_links", {"app_name": "mf-ln", "model_names": ["mf-ln-m2"]})
    add_model(conn, "mf-ln-m2", "1")
    refused(conn, "add_model_links", {"app_name": "mf-ln", "model_names": ["mf-ln-m2"]},
            "A model with name mf-ln-m is already linked to 'mf-ln'.")
    assert db(7).smembers("mf-ln") == {"mf-ln-m"}
    refused(conn, "add_model_links", {"app_name": "mf-ln-noapp", "model_names": ["mf-ln-m"]},
            "No app with name 'mf-ln-noapp' exists.")
    assert not db(7).exists("mf-ln-noapp")
    refused(conn, "add_model_links", '\n    {\n      "app_name": "myappname"\n'
            '      "model_names": ["mymodelname"]\n    }\n  ', "Error parsing JSON")
    refused(conn, "add_model_links", {"app_name": "mf-ln"},
            "JSON object does not have required key: model_names")


def test_get_model_links(conn):
    """TestGetModelLinks ('[]' exactly, then the model), TestGetModelLinksForNonexistentApp,
    TestGetModelLinksMalformedJson."""
    add_app(conn, "mf-gl", "integers", "4.3", 1000)
    assert admin(conn, "get_linked_models", {"app_name": "mf-gl"}).text == "[]"
    add_model(conn, "mf-gl-m", "4")
    link(conn, "mf-gl", "mf-gl-m")
    assert admin(conn, "get_linked_models", {"app_name": "mf-gl"}).text == '["mf-gl-m"]'
    refused(conn, "get_linked_models", {"app_name": "mf-gl-none"},
            "No application with name 'mf-gl-none' exists.")
    refused(conn, "get_linked_models", '\n    {\n      app_name : "a\n    }\n  ', "Error parsing JSON")


def test_delete_versioned_model_checks(conn, db):
    """TestDeleteVersionedModelMissingField, TestDeleteVersionedModelForNonexistentModel,
    TestDeleteVersionedModelForInvalidModel (a second delete is refused)."""
    add_model(conn, "mf-dvm", "1", labels=("label1", "label2", "label3"))
    refused(conn, "delete_versioned_model", {"model_name": "mf-dvm"},
            "JSON object does not have required key: model_version")
    refused(conn, "delete_versioned_model", {"model_name": "mf-dvm", "model_version": "2"},
            "model with name 'mf-dvm' and version '2' does not exist")
    assert len(db(2).hgetall("mf-dvm:1")) == 9
    ok(conn, "delete_versioned_model", {"model_name": "mf-dvm", "model_version": "1"})
    refused(conn, "delete_versioned_model", {"model_name": "mf-dvm", "model_version": "1"})


def test_delete_versioned_model_of_a_version_marked_invalid_is_refused(conn, db):
    """management_frontend.hpp delete_versioned_model: a hash without 'valid' is refused with
    "model with name '<m>' and version '<v>' is already marked as 'invalid'" (or, once the query
    frontend has removed it, "... does not exist"): never a success."""
    add_model(conn, "mf-dvm-inv", "1")
    add_model(conn, "mf-dvm-inv", "2")
    db(2).hdel("mf-dvm-inv:1", "valid")
    response = admin(conn, "delete_versioned_model", {"model_name": "mf-dvm-inv", "model_version": "1"})
    assert response.status_code == 400, response.text
    # Before the query frontend removes it: the management frontend's own check refuses it.
    add_model(conn, "mf-dvm-inv", "3")
    db(2).hset("mf-dvm-inv:4", mapping={"model_name": "mf-dvm-inv", "model_version": "4",
                                         "input_type": "doubles"})         # never valid: no hdel
    response = admin(conn, "delete_versioned_model", {"model_name": "mf-dvm-inv", "model_version": "4"})
    assert response.status_code == 400 and "already marked as 'invalid'" in response.text, response.text


# ==== query_frontend_tests.cpp: applications added and deleted while serving ==================

def test_many_applications_added_then_half_deleted_are_served_and_forgotten(conn):
    """TestAddManyApplications (500 apps) and TestDeleteManyApplications (250 of them deleted,
    250 left): every app registered is served (its default output, no model linked), every app
    deleted is unknown to /predict, and the rest keep answering."""
    names = [f"qf-many-{i}" for i in range(500)]
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda n: add_app(conn, n, "doubles", "0.4", 30000).status_code, names)) == {200}
        answers = list(pool.map(lambda n: predict(conn, n, {"input": [1.0]}), names))
        assert {(a.status_code, a.json()["output"], a.json()["default"]) for a in answers} == {(200, 0.4, True)}
        deleted, kept = names[::2], names[1::2]
        assert set(pool.map(lambda n: ok(conn, "delete_app", {"name": n}).status_code, deleted)) == {200}
        assert {predict(conn, n, {"input": [1.0]}).status_code for n in deleted[:25]} == {404}
        assert {predict(conn, n, {"input": [1.0]}).status_code for n in kept[:25]} == {200}
    listed = {n for n in get_json(conn, "get_all_applications", {"verbose": False}) if n.startswith("qf-many-")}
    assert listed == set(kept)


def test_an_app_linked_to_two_models_in_redis_is_answered_as_clippers_frontend_answered_it(conn, db, containers):
    """query_frontend.hpp decode_and_handle_predict, for links a Clipper component wrote into
    DB 7 (the management API links one model only): without a version, the query goes to each
    linked model that has a current version (selection_policies_test.cpp
    TestCombinePredictionsTwoPredictions: the first output answers), so a linked model with no
    current version is passed over; with a version, "Too many models linked to application
    <app>", a Query processing error."""
    add_app(conn, "two-links", "doubles", "dflt", 10_000_000)
    clipper_add_model(db, "two-links-a", "1")          # sorts first; no current version
    add_model(conn, "two-links-b", "1", input_type="doubles")
    link(conn, "two-links", "two-links-b")
    containers("two-links-b", "1", "from-b")
    db(7).sadd("two-links", "two-links-a")
    wait_for_output(conn, "two-links", "from-b")
    response = predict(conn, "two-links", {"input": [1.0], "version": "1"})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "Query processing error",
                               "cause": "Too many models linked to application two-links"}


# ==== config_test.cpp: a query frontend started by hand ======================================

HAND_REDIS_PORT = 26379
HAND_QUERY_PORT = 26437
HAND_RPC_PORT = 26801


@pytest.fixture
def hand_redis(tmp_path):
    server = subprocess.Popen([find_redis_server(), "--port", str(HAND_REDIS_PORT), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=HAND_REDIS_PORT, db=5, decode_responses=True)
    try:
        wait_for(lambda: _pings(client), 10, "the Redis server answering")
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def _pings(client):
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def hand_query_frontend(*flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
    return subprocess.Popen([sys.executable, "-m", "clipper", "query-frontend",
                             f"--redis-url=redis://127.0.0.1:{HAND_REDIS_PORT}",
                             f"--query-port={HAND_QUERY_PORT}", f"--rpc-port={HAND_RPC_PORT}", "--metrics-port=0",
                             *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_flags_of_a_hand_started_query_frontend_take_effect(hand_redis):
    """config_test.cpp TestChangeValues: the Redis address/port and cache size given at start are
    the ones used (query_frontend_main.cpp flags -> Config). An app written into that Redis as
    Clipper's management frontend writes it is served on the given query port."""
    clipper_add_application(lambda n: redis.Redis(port=HAND_REDIS_PORT, db=n, decode_responses=True),
                            "hand-app", "doubles", "0.25", 100000)
    process = hand_query_frontend("--cache-size=16")
    try:
        wait_for(lambda: port_open(HAND_QUERY_PORT) or process.poll() is not None, 30, "the query port open")
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        answer = requests.post(f"http://127.0.0.1:{HAND_QUERY_PORT}/hand-app/predict",
                               json={"input": [1.0]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["output"] == 0.25, answer.text
    finally:
        _stop(process)


def test_a_negative_prediction_cache_size_is_refused_at_start(hand_redis):
    """config_test.cpp TestSpecifyingNegativePredictionCacheSizeThrowsError (config.hpp
    set_prediction_cache_size throws std::invalid_argument): a query frontend given a negative
    cache size does not start serving."""
    process = hand_query_frontend("--cache-size=-1")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert process.poll() not in (None, 0), "the query frontend runs with a negative cache size"
    finally:
        _stop(process)


def test_a_query_frontend_started_on_clippers_state_serves_it(hand_redis):
    """query_frontend_tests.cpp TestReadApplicationsAtStartup, TestReadModelsAtStartup,
    TestReadModelLinksAtStartup: applications, models with their current versions and links
    written into Redis before the query frontend starts (as Clipper's redis.cpp writes them)
    are what it serves: each app, each model at its current version (m at 2, not 1), each
    app's links. TestReadInvalidModelVersionAtStartup: Clipper refused to start with a model
    that has no current version; ours starts and serves the rest (README "Where we differ")."""
    db = lambda n: redis.Redis(port=HAND_REDIS_PORT, db=n, decode_responses=True)  # noqa: E731
    clipper_add_application(db, "boot-app-1", "doubles", "1.0", 10_000_000, policy="exp3_policy")
    clipper_add_application(db, "boot-app-2", "doubles", "2.0", 50_000, policy="exp4_policy")
    for name, version in [("boot-m", "1"), ("boot-m", "2"), ("boot-n", "3"), ("boot-unset", "1")]:
        clipper_add_model(db, name, version, path=f"/tmp/models/{name}/{version}")
    clipper_set_current_version(db, "boot-m", "2")
    clipper_set_current_version(db, "boot-n", "3")
    db(7).sadd("boot-app-1", "boot-m")
    process = hand_query_frontend()
    containers = [ClipperContainer(name, version, f"{name}@{version}", rpc_port=HAND_RPC_PORT)
                  for name, version in [("boot-m", "1"), ("boot-m", "2")]]
    try:
        wait_for(lambda: port_open(HAND_QUERY_PORT) or process.poll() is not None, 30, "the query port open")
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        for container in containers:
            container.start()
        url = f"http://127.0.0.1:{HAND_QUERY_PORT}"

        def first_answer():
            return requests.post(f"{url}/boot-app-1/predict", json={"input": [1.0]}, timeout=20).json()
        wait_for(lambda: first_answer()["default"] is False, 30, "boot-app-1 answered by its model")
        assert first_answer()["output"] == "boot-m@2"
        second = requests.post(f"{url}/boot-app-2/predict", json={"input": [1.0]}, timeout=20).json()
        assert second["output"] == 2.0 and second["default"] is True, second
        assert all(c.error is None for c in containers), [c.error for c in containers]
    finally:
        for container in containers:
            container.stop()
        _stop(process)
