"""Cases of Clipper's own integration tests (integration-tests/clipper_admin_tests.py,
many_apps_many_models.py), run through our clipper_admin on the local backend.

Most of Clipper's cases deploy its noop container (``<registry>/noop-container:<version>``,
which answers "1.0" to every input) over an empty model directory, either built on it
(``build_and_deploy_model``) or run as an image (``deploy_model``).
"""
import os
import shutil
import tempfile

import pytest

from clipper_admin import CLIPPER_TEMP_DIR, ClipperException, __registry__, __version__
from helpers import predict

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
