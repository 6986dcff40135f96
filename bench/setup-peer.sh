#!/bin/sh
# The benchmark's own environment: its floor-server, plotting and profiling packages, and Ray
# Serve (the peer) in a separate venv, so that none of it enters the project's requirements.
#   sh bench/setup-peer.sh      (CLIPPER_BENCH_RAY_VENV chooses the venv; default below)
set -eu
cd "$(dirname "$0")"
command -v wrk >/dev/null || echo "wrk is missing: apt-get install wrk" >&2
python3 -m pip install -q -r requirements.txt
VENV=${CLIPPER_BENCH_RAY_VENV:-$HOME/.cache/clipper-bench/ray-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import ray.serve" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "ray[serve]"
fi
echo "Ray Serve $("$VENV/bin/python" -c 'import ray; print(ray.__version__)') in $VENV"
