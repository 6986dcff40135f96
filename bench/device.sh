#!/usr/bin/env bash
# The GPU benchmark (bench/gpu_serving.py) and the serving benchmark (bench/run.py) in one go,
# on a lent GPU machine that has PyTorch but no package index and no wrk.
#
#   bash bench/device.sh OUT_DIR          # there, from the repository root, with .whl/ and .wrk/
#                                         # beside it: about 7 minutes, results in OUT_DIR
#   bash bench/device.sh --smoke OUT_DIR  # anywhere (a CPU is enough): the same steps, short points
#   bash bench/device.sh report OUT_DIR   # here, after: copy the results into bench/results/
#   PARTS=gpu bash bench/device.sh OUT_DIR  # only A (PARTS=cpu: only B; default both)
#
# .whl/: the wheels the machine lacks (python3 -m pip download ... --python-version 3.12, see
# the README's Benchmark section); .wrk/: wrk.bin (Debian's wrk) and lib/, the libraries it links.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = report ]; then
    from=${2:?bench/device.sh report OUT_DIR}
    for f in "$from"/*-gpu.json "$from"/*-16core.json "$from"/*-16core.png; do
        [ -f "$f" ] && cp "$f" bench/results/ && echo "copied $(basename "$f")"
    done
    for f in bench/results/*-gpu.json; do [ -f "$f" ] && python3 bench/gpu_serving.py --report "$f" >/dev/null; done
    for f in bench/results/*-16core.json; do [ -f "$f" ] && python3 bench/run.py --report "$f" >/dev/null; done
    ls bench/results/*-gpu.md bench/results/*-16core.md 2>/dev/null
    exit 0
fi

smoke=
if [ "${1:-}" = --smoke ]; then smoke=1; shift; fi
out=${1:?bash bench/device.sh [--smoke] OUT_DIR}
mkdir -p "$out"
PYTHON=${PYTHON:-python3}
exec > >(tee "$out/device.log") 2>&1
started=$(date +%s)
step() { echo "== $(( $(date +%s) - started )) s: $*"; }

step "wheels"
if [ -d .whl ]; then
    site=${BENCH_SITE:-/tmp/site}
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .whl/*.whl || { echo "installing the wheels failed"; exit 1; }
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .wrk ]; then      # wrk with the libraries it links, which the machine may lack
    wrk_dir=$(mktemp -d)
    chmod +x .wrk/wrk.bin
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$PWD/.wrk/lib" "$PWD/.wrk/wrk.bin" >"$wrk_dir/wrk"
    chmod +x "$wrk_dir/wrk"
    export PATH=$wrk_dir:$PATH
fi
export PYTHONUNBUFFERED=1
{ wrk -v 2>&1 || true; } | grep -q '^wrk ' || { echo "wrk does not run:"; wrk -v; ldd .wrk/wrk.bin; exit 1; }
$PYTHON -c "import zmq, redis, httptools, orjson, simdjson, uvloop, aiohttp, cloudpickle, psutil, numpy, sys
from clipper.cluster.redis_binary import find_redis_server
print('python', sys.version.split()[0], 'redis server', find_redis_server() or sys.exit('no redis-server'))" || exit 1
ulimit -n 65536 2>/dev/null

cores=$(nproc)
gpus=$($PYTHON -c "import torch, torchvision; print(torch.cuda.device_count())") || gpus=0
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
# Replicas are given GPUs from what nvidia-smi lists; tell the cluster if only PyTorch sees them.
[ "$gpus" -gt 0 ] && [ -z "$gpu" ] && export CLIPPER_GPU_COUNT=$gpus
device=cpu
[ "$gpus" -gt 0 ] && [ -z "$smoke" ] && device=cuda
export BENCH_MACHINE="device machine (${gpu:-$gpus GPUs as PyTorch sees them})"
# wrk gets the last quarter of the cores to itself (4 of 16), the servers the rest.
wrk_cpus=()
[ "$cores" -ge 8 ] && wrk_cpus=(--wrk-cpus "$(( cores - cores / 4 ))-$(( cores - 1 ))")
echo "$BENCH_MACHINE, $cores cores, ${wrk_cpus[*]:-wrk on the same cores}"

parts=${PARTS:-gpu cpu}
if [[ " $parts " == *" gpu "* ]]; then
step "A: GPU serving ($device)"
if [ -n "$smoke" ]; then a_args=(--device cpu --quick --query-workers 1,2); else a_args=(--device cuda); fi
if [ "$device" = cuda ] || [ -n "$smoke" ]; then
    timeout -k 10 330 $PYTHON bench/gpu_serving.py "${a_args[@]}" "${wrk_cpus[@]}" --out "$out" >"$out/gpu.log" 2>&1
    echo "gpu_serving.py exited with $?"; grep -v ' INFO ' "$out/gpu.log" | tail -5
else
    echo "no GPU that PyTorch can use: skipped"
fi
for j in "$out"/*-gpu*.json; do      # cut short: the Markdown of what it measured
    [ -f "$j" ] && [ ! -f "${j%.json}.md" ] && $PYTHON bench/gpu_serving.py --report "$j" >/dev/null
done

fi

if [[ " $parts " == *" cpu "* ]]; then
step "B: serving benchmark on $cores cores"
if [ -n "$smoke" ]; then b_args=(--seconds 1 --concurrency 1,16,64 --query-workers 1,2); else
    b_args=(--seconds 4 --concurrency 1,16,64,256 --query-workers 1,8); fi
timeout -k 10 240 $PYTHON bench/run.py --no-peer --tag 16core "${b_args[@]}" "${wrk_cpus[@]}" --out "$out" \
    >"$out/16core.log" 2>&1
echo "run.py exited with $?"; grep -v ' INFO ' "$out/16core.log" | tail -3

fi

step "done"
echo
cat "$out"/*-gpu*.md 2>/dev/null || echo "no GPU results"
echo
grep -E '^\| (scenario|floor: bare|ours|target|[0-9].*(PASS|MISS))|PASS|MISS' "$out"/*-16core*.md 2>/dev/null \
    || echo "no 16-core results"
