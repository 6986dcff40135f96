#!/bin/sh
# A base image for the Docker backend built without Docker Hub: Debian bookworm (Python 3.11)
# from debootstrap, imported as clipper-local-base:bookworm. Needs root and debootstrap.
#   sh docker/build-local-base.sh && python basicQuerySimplified.py --backend docker
# (with CLIPPER_DOCKER_BASE_IMAGE=clipper-local-base:bookworm)
set -eu
TAG=${1:-clipper-local-base:bookworm}
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG is already built"; exit 0
fi
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap of Debian bookworm into $ROOTFS ..."
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" http://deb.debian.org/debian
tar -C "$ROOTFS" -c . | docker import - "$TAG"
echo "built $TAG"
