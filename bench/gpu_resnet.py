"""ResNet-18 on a GPU through Clipper's REST API, against bare batched PyTorch, same run.

    python bench/gpu_resnet.py                      # on a GPU machine (CUDA), about 5 minutes
    python bench/gpu_resnet.py --device cpu --quick # anywhere: small images, short points

A torchvision ResNet-18 with random weights (nothing is downloaded) is deployed with
``deploy_pytorch_model`` on a local cluster (one replica, ``num_gpus=1`` on CUDA, cache off),
once per batch size (Clipper's ``batch_size``, the most a replica takes at once) and once
with adaptive batching (``batch_size=-1``). Concurrent clients send distinct uint8 images
(base64 ``bytes`` inputs, as a camera would); the model function decodes, normalises and
classifies a batch. The reference is that same function called directly on batches of the
same size on the same device (bare PyTorch, no serving). Reported: images/s, p50/p99
latency per request (per batch for bare PyTorch), the ratio ours/bare at each batch size,
and adaptive batching against batch size 1. Needs torch, torchvision and this project's
requirements.txt; for a GPU machine without a package index, carry the wheels:
``pip download -d wheels -r requirements.txt`` here (same Python and platform), then
``pip install --no-index --find-links wheels -r requirements.txt`` there.
"""
import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PORTS = dict(clipper_query_port=21337, clipper_management_port=21338, clipper_rpc_port=27000,
             clipper_metric_port=21390)
DISTINCT_IMAGES = 256
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def make_predict(image_size):
    """The model function: uint8 HWC images (Clipper bytes inputs arrive as int8) -> class ids."""
    def predict(model, inputs):
        import torch
        device = next(model.parameters()).device
        images = np.stack(inputs).view(np.uint8).reshape(len(inputs), image_size, image_size, 3)
        batch = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        with torch.inference_mode():
            classes = model((batch - mean) / std).argmax(dim=1)
        return [str(c) for c in classes.tolist()]
    return predict


def percentile(values, q):
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def bare_pytorch(model, predict, images, batch_size, seconds, device):
    """The same function called directly on batches of ``batch_size``: images/s, ms/batch."""
    import torch
    batches = [[images[(start + i) % len(images)] for i in range(batch_size)]
               for start in range(0, 4 * batch_size, batch_size)]
    for batch in batches[:2]:                       # warm-up (cuDNN picks its kernels)
        predict(model, batch)
    latencies, done, stop = [], 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        predict(model, batches[len(latencies) % len(batches)])   # .tolist() synchronises
        if device == "cuda":
            torch.cuda.synchronize()
        latencies.append(time.perf_counter() - started)
        done += batch_size
    return {"images_per_s": done / sum(latencies), "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99)}


async def _client_loop(url, bodies, stop_at, offset, latencies, failures):
    import aiohttp
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        n = offset
        while time.monotonic() < stop_at:
            body = bodies[n % len(bodies)]
            n += 7
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    answer = await r.json(content_type=None)
                ok = r.status == 200 and not answer.get("default")
            except Exception:
                ok = False
            (latencies if ok else failures).append(time.perf_counter() - started)


def _client_process(url, bodies, clients, seconds, seed, queue):
    async def run():
        latencies, failures = [], []
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_client_loop(url, bodies, stop_at, seed * 1000 + i, latencies, failures)
                               for i in range(clients)))
        return latencies, failures
    queue.put(asyncio.run(run()))


def drive(url, bodies, clients, processes, seconds):
    """``clients`` concurrent closed-loop clients over ``processes`` processes."""
    queue = multiprocessing.Queue()
    per_process = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    workers = [multiprocessing.Process(target=_client_process, args=(url, bodies, n, seconds, i, queue))
               for i, n in enumerate(per_process) if n]
    for worker in workers:
        worker.start()
    latencies, failures = [], []
    for _ in workers:
        ok, failed = queue.get()
        latencies += ok
        failures += failed
    for worker in workers:
        worker.join()
    return {"images_per_s": len(latencies) / seconds, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "failed": len(failures)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="32x32 images, 3 s points, batch sizes 1 and 4")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 64; quick 8)")
    parser.add_argument("--client-processes", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="per point (default 15; quick 3)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224; quick 32")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    quick = args.quick
    batch_sizes = args.batch_sizes or ([1, 4] if quick else [1, 8, 32, 64])
    clients = args.clients or (8 if quick else 64)
    processes = args.client_processes or (1 if quick else min(8, os.cpu_count() or 1))
    seconds = args.seconds or (3.0 if quick else 15.0)
    image_size = args.image_size or (32 if quick else 224)

    import torch
    import torchvision
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here; run with --device cpu (e.g. --device cpu --quick)")
    os.environ.setdefault("CLIPPER_STATE_DIR", tempfile.mkdtemp(prefix="clipper-bench-"))
    from clipper_admin import ClipperConnection, LocalContainerManager
    from clipper_admin.deployers import pytorch as pytorch_deployer

    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    predict = make_predict(image_size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=image_size * image_size * 3, dtype=np.uint8).view(np.int8)
              for _ in range(DISTINCT_IMAGES)]
    bodies = [json.dumps({"input": base64.b64encode(image.tobytes()).decode()}).encode() for image in images]
    print(f"ResNet-18, random weights, {image_size}x{image_size} images, on {card}; {clients} clients "
          f"in {processes} processes, {seconds:g} s per point", flush=True)

    device_model = model.to(args.device)
    bare = {b: bare_pytorch(device_model, predict, images, b, seconds, args.device) for b in batch_sizes}
    device_model.cpu()
    del device_model
    if args.device == "cuda":
        torch.cuda.empty_cache()

    conn = ClipperConnection(LocalContainerManager(cluster_name="gpu-bench", **PORTS))
    conn.start_clipper(cache_size=0)
    served = {}
    try:
        for batch_size in batch_sizes + [-1]:
            name = f"resnet-b{batch_size}" if batch_size > 0 else "resnet-adaptive"
            pytorch_deployer.create_endpoint(
                conn, name, "bytes", predict, model, slo_micros=30_000_000, batch_size=batch_size,
                num_gpus=1 if args.device == "cuda" else 0)
            url = f"http://{conn.get_query_addr()}/{name}/predict"
            drive(url, bodies, min(clients, 8), 1, min(seconds, 3.0))       # warm-up
            served[batch_size] = drive(url, bodies, clients, processes, seconds)
            conn.stop_models(name)
            print(f"  measured {name}: {served[batch_size]['images_per_s']:.1f} images/s", flush=True)
    finally:
        conn.stop_all(graceful=False)

    lines = ["| batch size | bare PyTorch images/s (ms per batch p50/p99) | through REST images/s "
             "(ms per request p50/p99) | REST / bare |", "|---:|---:|---:|---:|"]
    for b in batch_sizes:
        lines.append(f"| {b} | {bare[b]['images_per_s']:.1f} ({bare[b]['p50_ms']:.1f}/{bare[b]['p99_ms']:.1f}) | "
                     f"{served[b]['images_per_s']:.1f} ({served[b]['p50_ms']:.1f}/{served[b]['p99_ms']:.1f}) | "
                     f"{served[b]['images_per_s'] / bare[b]['images_per_s']:.2f} |")
    adaptive = served[-1]
    lines.append(f"| adaptive | - | {adaptive['images_per_s']:.1f} ({adaptive['p50_ms']:.1f}/"
                 f"{adaptive['p99_ms']:.1f}) | {adaptive['images_per_s'] / max(bare.values(), key=lambda r: r['images_per_s'])['images_per_s']:.2f} of the best bare |")
    print("\n".join(lines))
    print(f"adaptive batching / batch size 1: {adaptive['images_per_s'] / served[1]['images_per_s']:.1f}x"
          if 1 in served else "")
    failed = sum(r["failed"] for r in served.values())
    print(f"failed or default answers: {failed}")
    if args.out:
        args.out.write_text(json.dumps({"card": card, "image_size": image_size, "clients": clients,
                                        "seconds": seconds, "bare": bare,
                                        "served": {str(k): v for k, v in served.items()}}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
