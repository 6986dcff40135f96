"""The Docker model image of a framework model installs its framework (the build itself
needs an engine: tests/docker/test_docker_deployers.py)."""
import json

from clipper_admin.docker.images import model_image_context


def test_a_docker_model_image_installs_the_framework_it_was_saved_with(tmp_path):
    (tmp_path / "clipper_model.json").write_text(json.dumps({
        "framework": "pyspark", "packages": ["pyspark==4.3.0"], "apt_packages": ["default-jre-headless"]}))
    dockerfile = model_image_context("runtime:1", tmp_path, ["scikit-learn>=1.3"])["Dockerfile"].decode()
    assert "apt-get install -y --no-install-recommends default-jre-headless" in dockerfile
    assert "pip install --no-cache-dir --disable-pip-version-check pyspark==4.3.0 'scikit-learn>=1.3'" \
        in dockerfile
    assert dockerfile.index("pip install") < dockerfile.index("COPY model /model")
