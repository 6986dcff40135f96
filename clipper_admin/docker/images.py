"""Images of the Docker backend, built locally from the project's own Dockerfile.

The runtime image (server package + dependencies on a base image whose Python matches the
client's) is tagged by a hash of what goes into it, so it is built once per change. A model
image adds one model directory to it, as Clipper's ``build_model`` does.
"""
import hashlib
import io
import logging
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import docker.errors

from clipper.container.frameworks import read_metadata
from clipper_admin.exceptions import ClipperException

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_REPOSITORY = "clipper-revived/runtime"
# What docker/build-local-base.sh builds, and the Python it has.
LOCAL_BASE, LOCAL_BASE_PYTHON = "clipper-local-base:bookworm", "3.11"
MODEL_PATH_IN_IMAGE = "/model"
# Models are cloudpickled by the client: they load only under the same Python minor version.
CLIENT_PYTHON = "%d.%d" % sys.version_info[:2]
_ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def default_base_image():
    return f"python:{CLIENT_PYTHON}-slim"


def _runtime_sources():
    """(path in the build context, file on disk) of everything the runtime image holds."""
    yield "Dockerfile", PROJECT_ROOT / "docker" / "Dockerfile"
    yield "requirements.txt", PROJECT_ROOT / "requirements.txt"
    ca_bundle = pip_ca_bundle()
    if ca_bundle:
        yield "pip-ca.crt", ca_bundle
    package = PROJECT_ROOT / "clipper"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield str(path.relative_to(PROJECT_ROOT)), path


def pip_ca_bundle():
    """The CA bundle the client's pip is configured with, if any: behind a TLS-inspecting
    proxy, pip in the image needs it too."""
    configured = os.environ.get("PIP_CERT")
    if not configured:
        listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                                 capture_output=True, text=True).stdout
        match = re.search(r"^[\w.]*\.cert='([^']+)'", listing, re.MULTILINE)
        configured = match and match.group(1)
    return Path(configured) if configured and Path(configured).is_file() else None


def runtime_tag(base_image):
    digest = hashlib.sha256(f"{base_image}\0{CLIENT_PYTHON}".encode())
    for name, path in _runtime_sources():
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return f"{RUNTIME_REPOSITORY}:{digest.hexdigest()[:16]}"


def _context(files):
    """A build context tarball of ``{name: bytes or Path}``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            if isinstance(content, Path):
                tar.add(str(content), arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    buffer.seek(0)
    return buffer


def _build(client, tag, context, buildargs=None):
    """Build, printing Docker's progress lines as they come."""
    logger.info("Building image %s", tag)
    try:
        for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                      forcerm=True, buildargs=buildargs or {}, decode=True,
                                      network_mode="host"):
            line = _ANSI_ESCAPES.sub("", chunk.get("stream", "")).strip()
            if line:
                logger.info("  %s", line)
            if "error" in chunk:
                raise ClipperException(f"Building {tag} failed: {chunk['error'].strip()}")
    except docker.errors.APIError as error:
        raise ClipperException(f"Building {tag} failed: {error.explanation or error}") from None


def ensure_runtime_image(client, base_image):
    base_image = available_base_image(client, base_image)
    tag = runtime_tag(base_image)
    if not _exists(client, tag):
        _require_client_python(client, base_image)
        _build(client, tag, _context(dict(_runtime_sources())), {"BASE_IMAGE": base_image})
    return tag


def _require_client_python(client, base_image):
    """Refuse a base whose Python is not the client's: its model containers could not load
    a single model."""
    try:
        found = "Python " + client.containers.run(
            base_image, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"], entrypoint=["python3"],
            network_mode="none", remove=True).decode().strip()
    except (docker.errors.ContainerError, docker.errors.APIError):
        found = "no usable python3"
    if found != f"Python {CLIENT_PYTHON}":
        raise ClipperException(
            f"The base image {base_image} has {found}, but this client runs "
            f"Python {CLIENT_PYTHON}: models are cloudpickled, so both need the same version. "
            f"Give a base with Python {CLIENT_PYTHON} as DockerContainerManager(base_image=...) or "
            "CLIPPER_DOCKER_BASE_IMAGE")


def available_base_image(client, base_image):
    """``base_image`` if it is here or can be pulled; else, for the default base, the local
    base of docker/build-local-base.sh when its Python is the client's."""
    if _exists(client, base_image):
        return base_image
    logger.info("Pulling base image %s", base_image)
    try:
        client.images.pull(base_image)
        return base_image
    except docker.errors.APIError as error:
        reason = error.explanation or str(error)
    if base_image == default_base_image() and CLIENT_PYTHON == LOCAL_BASE_PYTHON and _exists(client, LOCAL_BASE):
        logger.info("Using %s instead (it has Python %s too)", LOCAL_BASE, CLIENT_PYTHON)
        return LOCAL_BASE
    raise ClipperException(
        f"The base image {base_image} is not here and cannot be pulled ({reason}). Give one "
        f"with Python {CLIENT_PYTHON} as DockerContainerManager(base_image=...) or "
        "CLIPPER_DOCKER_BASE_IMAGE, or build one without Docker Hub: sh docker/build-local-base.sh "
        f"(Debian bookworm: Python {LOCAL_BASE_PYTHON})")


def _exists(client, image):
    return _image_id(client, image) is not None


def model_dockerfile(runtime_image, model_dir, pkgs_to_install=None):
    """The Dockerfile of a model image. A framework model's image gets its framework at the
    client's version (and Java for PySpark), as its metadata lists them."""
    metadata = read_metadata(str(model_dir))
    lines = [f"FROM {runtime_image}"]
    if metadata.get("apt_packages"):
        lines.append("RUN apt-get update && apt-get install -y --no-install-recommends "
                     + " ".join(metadata["apt_packages"]) + " && rm -rf /var/lib/apt/lists/*")
    packages = [*metadata.get("packages", []), *(pkgs_to_install or [])]
    if packages:
        lines.append("RUN if [ -f /opt/clipper/pip-ca.crt ]; then export PIP_CERT=/opt/clipper/pip-ca.crt; fi; "
                     "pip install --no-cache-dir " + " ".join(shlex.quote(p) for p in packages))
    lines += [f"COPY model {MODEL_PATH_IN_IMAGE}", f"ENV CLIPPER_MODEL_PATH={MODEL_PATH_IN_IMAGE}"]
    return "\n".join(lines) + "\n"


def build_model_image(client, runtime_image, tag, model_dir, pkgs_to_install=None):
    """``runtime_image`` + the model directory at /model (+ pip packages, if any)."""
    dockerfile = model_dockerfile(runtime_image, model_dir, pkgs_to_install)
    files = {"Dockerfile": dockerfile.encode(), "model": Path(model_dir)}
    previous = _image_id(client, tag)
    _build(client, tag, _context(files))
    if previous not in (None, _image_id(client, tag)):
        _remove_unused(client, previous)  # a rebuilt name:version would leave it untagged
    return tag


def _image_id(client, image):
    try:
        return client.images.get(image).id
    except docker.errors.ImageNotFound:
        return None


def _remove_unused(client, image_id):
    try:
        client.images.remove(image_id)
    except docker.errors.APIError:
        pass                               # a container still uses it
