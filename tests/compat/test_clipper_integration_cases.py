"""Cases of Clipper's own integration tests (integration-tests/clipper_admin_tests.py,
many_apps_many_models.py, multi_tenancy_test.py), run through our clipper_admin on the local
backend.

Most of Clipper's cases deploy its noop container (``<registry>/noop-container:<version>``,
which answers "1.0" to every input) over an empty model directory, either built on it
(``build_and_deploy_model``) or run as an image (``deploy_model``).
"""
import os
import shutil
import tempfile
import time
import zipfile

import pytest

from clipper_admin import CLIPPER_TEMP_DIR, ClipperException, __registry__, __version__
from clipper_admin.deployers import python as python_deployer
from helpers import local_cluster, predict, prediction, total

NOOP_IMAGE = f"{__registry__}/noop-container:{__version__}"


@pytest.fixture(scope="module")
def conn(clipper_conn):
    return clipper_conn


@pytest.fixture
def fake_model_data(tmp_path):
    """Clipper's test_utils.fake_model_data: an empty directory."""
    return str(tmp_path)


def registered(conn, name):
    return sorted(m["model_version"] for m in conn.get_all_models(verbose=True) if m["model_name"] == name)


def test_a_model_built_on_the_noop_container_answers_as_it_does(conn, fake_model_data):
    """test_deployed_model_queried_successfully and test_batch_queries_returned_successfully."""
    conn.register_application("noop-app", "doubles", "DEFAULT", 3000000)
    conn.build_and_deploy_model("noop-built", 1, "doubles", fake_model_data, NOOP_IMAGE)
    assert conn.get_model_info("noop-built", 1)["input_type"] == "doubles"
    conn.link_model_to_app("noop-app", "noop-built")
    single = predict(conn, "noop-app", {"input": [99.3, 18.9, 67.2, 34.2]}).json()
    assert (single["output"], single["default"]) == (1.0, False)
    batch = predict(conn, "noop-app", {"input_batch": [[99.3, 18.9], [101.1, 45.6], [12.3, 6.7]]}).json()
    assert [(p["output"], p["default"]) for p in batch["batch_predictions"]] == [(1.0, False)] * 3


def test_the_noop_container_image_deploys_scales_and_stops(conn):
    """test_stop_models, test_set_num_replicas_for_deployed_model_succeeds and
    test_remove_inactive_containers_succeeds: deploy_model runs Clipper's image by name."""
    for version in ["i", "ii"]:
        conn.deploy_model("jimmypage", version, "doubles", NOOP_IMAGE, num_replicas=1)
    assert registered(conn, "jimmypage") == ["i", "ii"]
    assert conn.get_num_replicas("jimmypage", "ii") == 1
    conn.set_num_replicas("jimmypage", 3)            # the current version, ii
    assert conn.get_num_replicas("jimmypage", "ii") == 3
    conn.set_num_replicas("jimmypage", 2, "ii")
    assert conn.get_num_replicas("jimmypage", "ii") == 2
    conn.stop_inactive_model_versions(["jimmypage"])
    assert registered(conn, "jimmypage") == ["ii"] and conn.get_num_replicas("jimmypage", "i") == 0
    conn.register_application("jimmy-app", "doubles", "DEFAULT", 3000000)
    conn.link_model_to_app("jimmy-app", "jimmypage")
    assert predict(conn, "jimmy-app", {"input": [1.0]}).json()["output"] == 1.0
    conn.stop_models(["jimmypage"])
    assert registered(conn, "jimmypage") == []


def replica_count(conn, name):
    return len([r for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == name])


def test_a_model_scaled_down_to_no_replica_gives_its_apps_the_default_saying_why(conn, fake_model_data):
    """test_remove_inactive_container (0.4.1 passes set_num_replicas's arguments by name)."""
    conn.register_application("scaled-down-app", "doubles", "DEFAULT", 3000000)
    conn.build_and_deploy_model("scaled-down", 1, "doubles", fake_model_data, NOOP_IMAGE, num_replicas=2)
    conn.link_model_to_app("scaled-down-app", "scaled-down")
    assert replica_count(conn, "scaled-down") == 2
    for count, query in [(2, [101.1, 99.5, 107.2]), (1, [101.1, 99.9])]:
        conn.set_num_replicas(name="scaled-down", version=1, num_replicas=count)
        assert replica_count(conn, "scaled-down") == count
        for _ in range(2):
            response = predict(conn, "scaled-down-app", {"input": query})
            assert response.status_code == 200 and response.json()["default"] is False
    conn.set_num_replicas(name="scaled-down", version=1, num_replicas=0)
    assert replica_count(conn, "scaled-down") == 0
    for _ in range(2):
        answer = predict(conn, "scaled-down-app", {"input": [101.1]}).json()
        assert (answer["output"], answer["default"], answer["default_explanation"]) == (
            "DEFAULT", True, "No connected models found for query")


def test_each_new_version_of_a_linked_model_is_served_from_version_0_on(conn, fake_model_data):
    """many_apps_many_models: an app answers before it has a model; the model's versions are
    0, 1, 2 (whole numbers, 0 first) and the link is made once, after version 0."""
    conn.register_application("many-app", "doubles", "default_pred", 100000)
    before = predict(conn, "many-app", {"input": [0.5] * 30})
    assert before.status_code == 200 and before.json()["output"] == "default_pred"
    for version in range(3):
        conn.build_and_deploy_model("many-model", version, "doubles", fake_model_data, NOOP_IMAGE, num_replicas=1)
        if version == 0:
            conn.link_model_to_app("many-app", "many-model")
        assert conn.get_current_model_version("many-model") == str(version)
        answers = [predict(conn, "many-app", {"input": [version + n / 100] * 30}).json() for n in range(5)]
        assert [answer["default"] for answer in answers] == [False] * 5, answers
    assert registered(conn, "many-model") == ["0", "1", "2"]


def test_stop_inactive_model_versions_stops_every_replica_of_the_old_version(conn, fake_model_data):
    """test_remove_inactive_containers_succeeds: versions given as whole numbers, listed as strings."""
    conn.build_and_deploy_model("remove-inactive", 1, "doubles", fake_model_data, NOOP_IMAGE, num_replicas=2)
    assert replica_count(conn, "remove-inactive") == 2 and registered(conn, "remove-inactive") == ["1"]
    conn.build_and_deploy_model("remove-inactive", 2, "doubles", fake_model_data, NOOP_IMAGE, num_replicas=3)
    assert replica_count(conn, "remove-inactive") == 5 and registered(conn, "remove-inactive") == ["1", "2"]
    conn.stop_inactive_model_versions(["remove-inactive"])
    assert replica_count(conn, "remove-inactive") == 3 and registered(conn, "remove-inactive") == ["2"]


def test_model_version_sets_correctly(conn):
    """Two containerless versions: set_model_version makes the first current again."""
    conn.register_model("set-back", "v1", "doubles")
    conn.register_model("set-back", "v2", "doubles")
    conn.set_model_version("set-back", "v1")
    assert sorted((m["model_version"], m["is_current_version"]) for m in conn.get_all_models(verbose=True)
                  if m["model_name"] == "set-back") == [("v1", True), ("v2", False)]


def test_another_image_is_still_refused_saying_why(conn):
    with pytest.raises(ClipperException, match="To run a Docker image, use DockerContainerManager"):
        conn.deploy_model("other-image", 1, "doubles", f"{__registry__}/sum-container:{__version__}")
    assert conn.get_model_info("other-image", 1) is None


def test_get_logs_creates_log_files(conn):
    """Clipper's test reads ``cm.centralize_log`` first, an attribute of 0.4.1's Docker manager."""
    assert conn.cm.centralize_log is False
    os.makedirs(CLIPPER_TEMP_DIR, exist_ok=True)
    log_dir = tempfile.mkdtemp(dir=CLIPPER_TEMP_DIR)
    try:
        paths = conn.get_clipper_logs(logging_dir=log_dir)
        assert len(paths) >= 1 and all(os.path.isfile(path) for path in paths)
    finally:
        shutil.rmtree(log_dir)


@pytest.mark.parametrize("image, is_noop", [
    ("clipper/noop-container:0.4.1", True), ("localhost:5000/noop-container:develop", True),
    ("noop-container", True), ("clipper/noop-container-bench:0.4.1", False),
    ("my-noop-container:1", False), ("clipper/python36-closure-container:0.4.1", False)])
def test_which_images_are_clippers_noop_container(image, is_noop):
    from clipper_admin.clipper_images import is_noop_image
    assert is_noop_image(image) is is_noop


def sizes_of_batches(xs):
    time.sleep(0.2)                  # slow enough for a backlog to build up behind each call
    return [str(len(xs)) for _ in xs]


def test_a_fixed_batch_size_is_the_size_of_the_batches_a_backlog_goes_out_in(conn):
    """test_fixed_batch_size_model_processes_specified_query_batch_size_when_saturated, on a
    replica of ours: each input is answered with the size of the batch it came in."""
    python_deployer.create_endpoint(conn, "fixed-batches", "doubles", sizes_of_batches,
                                    slo_micros=30_000_000, batch_size=6)
    response = predict(conn, "fixed-batches", {"input_batch": [[n / 10] for n in range(60)]}, timeout=60)
    answers = response.json()["batch_predictions"]
    assert not any(answer["default"] for answer in answers), answers
    sizes = [int(answer["output"]) for answer in answers]
    assert max(sizes) == 6, sizes                 # never more than the registered size
    assert sizes.count(6) >= 48, sizes            # Clipper's test wants 70%; most batches are full


def probe_wheel(directory, name, answer):
    """A minimal pure-Python wheel of a package ``name`` holding ANSWER = ``answer``, for pip
    to install from a directory (no index needed)."""
    dist_info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": f"ANSWER = {answer}\n",
             f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist_info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"])
    with zipfile.ZipFile(directory / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return ["--no-index", "--find-links", str(directory), name]


@pytest.mark.parametrize("version, base_image", [
    ("py2", f"{__registry__}/python-closure-container:{__version__}"),
    ("py36", f"{__registry__}/python36-closure-container:{__version__}")])
def test_build_model_on_a_closure_image_installs_the_packages_asked(conn, fake_model_data, tmp_path,
                                                                    version, base_image):
    """test_build_model_with_custom_packages: Clipper's closure images as base images, with
    pkgs_to_install (a wheel of ours here: Clipper's sympy==1.1.* needs an index)."""
    packages = probe_wheel(tmp_path, "clipper_probe_pkg", 41)
    image = conn.build_model("built-with-pkgs", version, fake_model_data, base_image, None,
                             pkgs_to_install=packages)
    assert os.path.isfile(os.path.join(image, "modules", "clipper_probe_pkg", "__init__.py"))


def answer_of_the_package(xs):
    import clipper_probe_pkg
    return [str(clipper_probe_pkg.ANSWER + len(x)) for x in xs]


def test_a_closure_imports_what_pkgs_to_install_installed(conn, tmp_path):
    packages = probe_wheel(tmp_path, "clipper_probe_pkg", 41)
    python_deployer.create_endpoint(conn, "with-pkgs", "doubles", answer_of_the_package,
                                    pkgs_to_install=packages)
    assert prediction(conn, "with-pkgs", {"input": [1.0]})["output"] == 42


def total_plus_100(xs):
    return [str(sum(x) + 100) for x in xs]


def test_two_clusters_serve_the_same_names_each_with_its_own_model(conn):
    """multi_tenancy_test: two clusters at once, each with an endpoint of the same name."""
    with local_cluster("second-tenant", query_port=20337, management_port=20338, rpc_port=20700,
                       metric_port=20390) as other:
        python_deployer.create_endpoint(conn, "tenant-app", "doubles", total)
        python_deployer.create_endpoint(other, "tenant-app", "doubles", total_plus_100)
        for _ in range(3):
            mine = prediction(conn, "tenant-app", {"input": [0.5, 1.5]})
            theirs = prediction(other, "tenant-app", {"input": [0.5, 1.5]})
            assert (mine["output"], mine["default"]) == (2.0, False)
            assert (theirs["output"], theirs["default"]) == (102.0, False)
        assert [m["model_name"] for m in other.get_all_models(verbose=True)] == ["tenant-app"]
