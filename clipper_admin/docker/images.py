"""Images of the Docker backend, built locally from the project's own Dockerfile.

The runtime image (server package + dependencies on a base image whose Python matches the
client's) is tagged by a hash of what goes into it, so it is built once per change. A model
image adds one model directory to it, as Clipper's ``build_model`` does. Every build that runs
pip trusts the CA bundle the client's pip trusts (a TLS-inspecting proxy needs it).
"""
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import docker.errors

from clipper.container.frameworks import read_metadata
from clipper_admin.clipper_images import noop_model_directory
from clipper_admin.exceptions import ClipperException

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_REPOSITORY = "clipper-revived/runtime"
# What docker/build-local-base.sh builds without Docker Hub: the Debian release whose
# python3 is each of these versions.
DEBIAN_RELEASE_OF_PYTHON = {"3.11": "bookworm", "3.13": "trixie"}
MODEL_PATH_IN_IMAGE = "/model"
# On our own build of Clipper's noop container: the runtime image it was built on.
NOOP_RUNTIME_LABEL = "ai.clipper.noop.runtime"
# In a build context when the client's pip trusts an extra CA; the Dockerfiles pass it to pip.
PIP_CA_FILE = "pip-ca.crt"
# Models are cloudpickled by the client: they load only under the same Python minor version.
CLIENT_PYTHON = "%d.%d" % sys.version_info[:2]
_ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def default_base_image():
    return f"python:{CLIENT_PYTHON}-slim"


def local_base_image(python=CLIENT_PYTHON):
    """The tag docker/build-local-base.sh gives a base with ``python``; None where Debian has
    no release with that Python."""
    release = DEBIAN_RELEASE_OF_PYTHON.get(python)
    return release and f"clipper-local-base:{release}"


def _runtime_sources():
    """(path in the build context, file on disk) of everything the runtime image holds."""
    yield "Dockerfile", PROJECT_ROOT / "docker" / "Dockerfile"
    yield "requirements.txt", PROJECT_ROOT / "requirements.txt"
    ca_bundle = pip_ca_bundle()
    if ca_bundle:
        yield PIP_CA_FILE, ca_bundle
    for package in ("clipper", "clipper_admin"):      # clipper_admin: for clipper_admin.metrics
        for path in sorted((PROJECT_ROOT / package).rglob("*")):
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
    """``base_image`` if it is here; for the default base, else the local base with the
    client's Python if it is here (so an offline machine never waits on a pull); else
    ``base_image`` pulled."""
    if _exists(client, base_image):
        return base_image
    local_base = local_base_image()
    if base_image == default_base_image() and local_base and _exists(client, local_base):
        logger.info("Using %s (Python %s) as the base image", local_base, CLIENT_PYTHON)
        return local_base
    logger.info("Pulling base image %s", base_image)
    try:
        client.images.pull(base_image)
        return base_image
    except docker.errors.APIError as error:
        reason = error.explanation or str(error)
    raise ClipperException(f"The base image {base_image} is not here and cannot be pulled ({reason}). "
                           + _how_to_get_a_base())


def _how_to_get_a_base():
    """What a user without Docker Hub does to get a base with the client's Python."""
    give_one = (f"give an image with Python {CLIENT_PYTHON} as DockerContainerManager(base_image=...) "
                "or CLIPPER_DOCKER_BASE_IMAGE")
    if local_base_image():
        return (f"Build one without Docker Hub, once, as root: sh docker/build-local-base.sh {CLIENT_PYTHON} "
                f"(Debian {DEBIAN_RELEASE_OF_PYTHON[CLIENT_PYTHON]}), or {give_one}")
    debian = " and ".join(f"{python} ({release})" for python, release in DEBIAN_RELEASE_OF_PYTHON.items())
    return (f"No Debian release has Python {CLIENT_PYTHON} (they have {debian}), so it cannot be built "
            f"here. Either load it from a machine with Docker Hub access (there: docker pull "
            f"{default_base_image()} && docker save {default_base_image()} -o base.tar; here: docker "
            f"load -i base.tar), or {give_one}, or run this client on Python "
            f"{' or '.join(DEBIAN_RELEASE_OF_PYTHON)} after: sh docker/build-local-base.sh <that version>")


def _exists(client, image):
    return _image_id(client, image) is not None


def model_image_context(runtime_image, model_dir, pkgs_to_install=None, labels=None):
    """The build context of a model image, ``{name in the context: bytes or a path}``:
    ``runtime_image`` + the model directory at /model (+ pip packages, if any), running the
    model container by default. A framework model's image gets its framework at the
    client's version (and Java for PySpark), as its metadata lists them."""
    metadata = read_metadata(str(model_dir))
    lines = [f"FROM {runtime_image}"]
    files = {"model": Path(model_dir)}
    if metadata.get("apt_packages"):
        lines.append("RUN apt-get update && apt-get install -y --no-install-recommends "
                     + " ".join(metadata["apt_packages"]) + " && rm -rf /var/lib/apt/lists/*")
    packages = [*metadata.get("packages", []), *(pkgs_to_install or [])]
    if packages:
        install = "pip install --no-cache-dir --disable-pip-version-check " + " ".join(map(shlex.quote, packages))
        ca_bundle = pip_ca_bundle()
        if ca_bundle:       # behind a TLS-inspecting proxy, as for the runtime image
            files[PIP_CA_FILE] = ca_bundle
            lines.append(f"COPY {PIP_CA_FILE} /tmp/{PIP_CA_FILE}")
            install = f"PIP_CERT=/tmp/{PIP_CA_FILE} {install} && rm /tmp/{PIP_CA_FILE}"
        lines.append(f"RUN {install}")
    lines += [f"COPY model {MODEL_PATH_IN_IMAGE}", f"ENV CLIPPER_MODEL_PATH={MODEL_PATH_IN_IMAGE}",
              'CMD ["model-container"]']
    # Last: the containers of the RUN steps above would carry them (a cluster's label made a
    # build look like a running cluster).
    lines += [f"LABEL {key}={json.dumps(value)}" for key, value in (labels or {}).items()]
    files["Dockerfile"] = ("\n".join(lines) + "\n").encode()
    return files


def build_model_image(client, runtime_image, tag, model_dir, pkgs_to_install=None, labels=None):
    """Build the model image ``tag`` (see ``model_image_context``); return ``tag``."""
    files = model_image_context(runtime_image, model_dir, pkgs_to_install, labels)
    previous = _image_id(client, tag)
    _build(client, tag, _context(files))
    if previous not in (None, _image_id(client, tag)):
        _remove_unused(client, previous)  # a rebuilt name:version would leave it untagged
    return tag


def ensure_noop_image(client, runtime_image, tag):
    """Clipper's noop container image ``tag``, to run or build on, as 0.4.1 pulled it. The
    engine's own ``tag`` is used as-is (say, Clipper's image, loaded by the user); else our
    own is built under that name: ``runtime_image`` serving the noop container's answers.
    Nothing is pulled: Clipper's registry is frozen, and an offline run must not wait."""
    try:
        found = client.images.get(tag)
    except docker.errors.ImageNotFound:
        found = None
    built_on = found.labels.get(NOOP_RUNTIME_LABEL) if found is not None else None
    if found is not None and built_on in (None, runtime_image):
        return tag              # not ours, or ours on this runtime image
    why = (f"here is ours, built on another runtime image ({built_on})" if found is not None
           else "is not on this Docker engine (and is not pulled)")
    logger.info("Clipper's noop container %s %s: building our own under that name from %s; it "
                "answers \"1.0\" to every input, as Clipper's does", tag, why, runtime_image)
    model_dir = noop_model_directory()
    try:
        return build_model_image(client, runtime_image, tag, model_dir,
                                 labels={NOOP_RUNTIME_LABEL: runtime_image})
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def image_label(client, image, label):
    """The value of ``label`` on ``image``; None if the engine lacks the image or it has none."""
    try:
        return (client.images.get(image).labels or {}).get(label)
    except docker.errors.ImageNotFound:
        return None


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
