#!/bin/sh
# A base image for the Docker backend built without Docker Hub: the Debian release whose
# python3 is the client's Python, from debootstrap, imported as clipper-local-base:<release>.
# The Docker backend uses it by itself when the default base cannot be had. Needs root and
# debootstrap.
#   sh docker/build-local-base.sh [PYTHON_VERSION]     # 3.11 (bookworm) or 3.13 (trixie);
#                                                      # default: the version of python3
set -eu
PYTHON=${1:-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
case "$PYTHON" in
    3.11) RELEASE=bookworm ;;
    3.13) RELEASE=trixie ;;
    *) echo "No Debian release has Python $PYTHON (bookworm has 3.11, trixie 3.13): give the Docker" \
            "backend an image with Python $PYTHON as CLIPPER_DOCKER_BASE_IMAGE (e.g. python:$PYTHON-slim" \
            "loaded with docker load), or use a Python 3.11 or 3.13 client" >&2
       exit 2 ;;
esac
TAG=clipper-local-base:$RELEASE
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG is already built"; exit 0
fi
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap of Debian $RELEASE (Python $PYTHON) into $ROOTFS ..."
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$RELEASE" "$ROOTFS" http://deb.debian.org/debian
tar -C "$ROOTFS" -c . | docker import - "$TAG"
echo "built $TAG"
