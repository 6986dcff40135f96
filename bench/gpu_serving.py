"""ResNet-18 (3x32x32 floats, fp16) through deploy_python_closure on a GPU, against bare PyTorch.

    python bench/gpu_serving.py --out DIR                  # on a GPU machine, about 3 minutes
    python bench/gpu_serving.py --device cpu --quick       # anywhere: a smoke run
    python bench/gpu_serving.py --report DIR/<date>-gpu.json   # the Markdown again, from the JSON

A torchvision ResNet-18 with random weights (nothing is downloaded) in half precision is
deployed with ``deploy_python_closure`` (one replica, ``num_gpus=1`` on CUDA, adaptive
batching, cache off) twice: the app's input type ``floats`` with JSON lists of 3072 numbers,
and ``bytes`` with base64 of 3072 little-endian float32 (Clipper's fast path for large numeric
inputs). Load comes from wrk (bench/load.py), 1 client and ``--clients`` (256), with distinct
inputs; default outputs count as failures, and the app's latency objective (``--slo-ms``) is
printed beside p99. The model function counts the batches it is given, so the mean batch is
what the GPU saw. The reference: the same function called directly on batches of 1, 32 and 128
on the same device (bare PyTorch, no serving). Each variant is measured with every
``--query-workers`` count (query frontend processes sharing the port).
Target: at ``--clients``, at least 0.25 of bare PyTorch's batch-128 rate, p99 within the objective.
"""
import argparse
import base64
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import report  # noqa: E402
import servers  # noqa: E402
from load import reserve_cores, wrk  # noqa: E402
from clipper_admin.deployers import python as python_deployer  # noqa: E402

PIXELS = 3 * 32 * 32
DISTINCT_INPUTS = 512
BARE_BATCHES = (1, 32, 128)
TARGET_SHARE = 0.25


# ---- the model function: pickled by value (this file runs as __main__) into the replica ----
def resnet18_fp16(device):
    import torch
    import torchvision
    torch.manual_seed(0)
    # cuDNN's default kernels, not its benchmark mode: adaptive batches come in many sizes,
    # and benchmark mode would time kernels anew for each while the clients wait.
    return torchvision.models.resnet18(weights=None).to(device).half().eval()


def make_predict(device, batch_log):
    """Inputs: a 2-D batch of float32 rows (``floats``) or of their bytes (``bytes`` arrive as
    int8). Returns the class ids. Writes "<batches> <inputs>" so far to ``batch_log``."""
    state = {}

    def predict(inputs):
        import torch
        if not state:
            state.update(model=resnet18_fp16(device), batches=0, inputs=0,
                         log=os.open(batch_log, os.O_WRONLY | os.O_CREAT, 0o644))
        images = torch.from_numpy(np.ascontiguousarray(inputs).view(np.float32).reshape(-1, 3, 32, 32))
        with torch.inference_mode():
            classes = state["model"](images.to(device).half()).argmax(dim=1).tolist()   # waits for the GPU
        state["batches"] += 1
        state["inputs"] += len(classes)
        os.pwrite(state["log"], b"%20d %20d\n" % (state["batches"], state["inputs"]), 0)
        return classes
    return predict


def logged_batches(batch_log: Path):
    """(batches, inputs) the model function has taken so far."""
    try:
        batches, inputs = batch_log.read_text().split()
        return int(batches), int(inputs)
    except (OSError, ValueError):
        return 0, 0


# ---- measuring ----
def bare_pytorch(device, rows, batch_size, seconds, scratch):
    """The model function called directly on batches of ``batch_size``: images/s, ms per batch."""
    predict = make_predict(device, str(scratch / f"bare-{batch_size}"))
    batches = [rows[start:start + batch_size] for start in range(0, len(rows) - batch_size + 1, batch_size)]
    for batch in batches[:3]:                       # warm-up: the model on the device, CUDA's start
        predict(batch)
    latencies, stop = [], time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        predict(batches[len(latencies) % len(batches)])
        latencies.append(time.perf_counter() - started)
    return {"images_per_s": batch_size * len(latencies) / sum(latencies),
            "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99))}


def write_bodies(values, scratch):
    """One file per input type: a request body per line, the same values in both."""
    floats = scratch / "floats.bodies"
    floats.write_text("".join(json.dumps({"input": row.tolist()}, separators=(",", ":")) + "\n" for row in values))
    raw = scratch / "bytes.bodies"
    raw.write_text("".join(json.dumps({"input": base64.b64encode(row.astype("<f4").tobytes()).decode()}) + "\n"
                           for row in values))
    return {"floats": floats, "bytes": raw}


def point(url, clients, seconds, body_file, batch_log):
    before = logged_batches(batch_log)
    result = wrk(url, clients, seconds, body_file=body_file, count_defaults=True)
    after = logged_batches(batch_log)
    duration = result["duration_us"] / 1e6
    failed = result["failed"] + result["default_answers"]
    batches = after[0] - before[0]
    return {"clients": clients, "images_per_s": (result["requests"] - failed) / duration,
            "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
            "failed": failed, "defaults": result["default_answers"],
            "mean_batch": (after[1] - before[1]) / batches if batches else 0.0,
            "wrk_cores": result["wrk_cores"]}


def measure_variant(conn, args, workers, input_type, body_file, batch_log, data, save):
    app = f"resnet-{input_type}"
    python_deployer.create_endpoint(conn, app, input_type, make_predict(args.device, str(batch_log)),
                                    slo_micros=args.slo_ms * 1000, num_gpus=1 if args.device == "cuda" else 0)
    url = servers.app_url(app)
    wrk(url, 1, 2, body_file=body_file)                      # warm-up: the model, the GPU's kernels
    wrk(url, max(args.clients), 2, body_file=body_file)
    for clients in args.clients:
        measured = point(url, clients, args.seconds, body_file, batch_log)
        measured.update(input_type=input_type, query_workers=workers)
        data["served"].append(measured)
        print(f"  {input_type}, {workers or 1} query worker(s), {clients} clients: "
              f"{measured['images_per_s']:,.0f} images/s, p99 {measured['p99_ms']:.1f} ms, "
              f"mean batch {measured['mean_batch']:.1f}, failed {measured['failed']}", flush=True)
        save()
    conn.stop_models(app)                                    # frees its GPU memory for the next


def measure_served(args, bodies, scratch, data, save):
    """Every variant; one that fails is recorded and the others still run (one run, one chance)."""
    for workers in args.query_workers:
        try:
            with servers.cluster(cache_size=0, query_workers=workers) as conn:
                for input_type in ("floats", "bytes"):
                    try:
                        measure_variant(conn, args, workers, input_type, bodies[input_type],
                                        scratch / f"resnet-{input_type}-w{workers}.batches", data, save)
                    except Exception as error:
                        data["errors"].append(f"{input_type}, {workers or 1} query worker(s): {error!r}")
                        print(data["errors"][-1], flush=True)
        except Exception as error:
            data["errors"].append(f"cluster with {workers or 1} query worker(s): {error!r}")
            print(data["errors"][-1], flush=True)
        save()


# ---- the report ----
def markdown(data) -> str:
    bare = data["bare"]
    reference = bare.get("128") or max(bare.values(), key=lambda r: r["images_per_s"], default=None)
    lines = [f"# GPU serving, {data['date']}", "",
             f"{data['machine']}; {data['card']}. ResNet-18, random weights, 3x32x32 inputs, fp16, "
             f"through `deploy_python_closure` (one replica, adaptive batching, cache off); wrk on "
             f"{data['wrk_cpus'] or 'the same cores'}; {data['seconds']} s per point after a warm-up; "
             f"latency objective (the app's SLO) {data['slo_ms']} ms, default outputs count as failed.", "",
             "| bare PyTorch, batch | images/s | ms per batch p50 | p99 |", "|---:|---:|---:|---:|"]
    lines += [f"| {b} | {r['images_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for b, r in bare.items()]
    lines += ["", "| input type | query workers | clients | images/s | p50 (ms) | p99 (ms) | mean batch | failed "
              "| / bare batch 128 | wrk (cores) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["served"]:
        share = r["images_per_s"] / reference["images_per_s"] if reference else float("nan")
        lines.append(f"| {r['input_type']} | {r['query_workers']} | {r['clients']} | {r['images_per_s']:,.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.1f} | {r['failed']} | "
                     f"{share:.3f} | {r['wrk_cores']:.2f} |")
    lines += ["", f"Target at {max(data['clients'])} clients: at least {TARGET_SHARE} of bare PyTorch's batch-128 "
              f"rate, p99 within {data['slo_ms']} ms.", ""]
    for r in data["served"]:
        if r["clients"] == max(data["clients"]) and reference:
            share = r["images_per_s"] / reference["images_per_s"]
            ok = share >= TARGET_SHARE and r["p99_ms"] <= data["slo_ms"]
            lines.append(f"- {r['input_type']}, {r['query_workers']} query worker(s): {share:.3f} of bare, p99 "
                         f"{r['p99_ms']:.1f} ms: {'PASS' if ok else 'MISS'}")
    by_key = {(r["input_type"], r["query_workers"], r["clients"]): r for r in data["served"]}
    for (input_type, workers, clients), r in by_key.items():
        floats = by_key.get(("floats", workers, clients))
        if input_type == "bytes" and floats and floats["images_per_s"]:
            lines.append(f"- bytes / floats (JSON lists), {workers} query worker(s), {clients} clients: "
                         f"{r['images_per_s'] / floats['images_per_s']:.2f}x the images/s")
    lines += [f"- failed to measure: {error}" for error in data.get("errors", [])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="2 s points, 16 clients (a smoke run)")
    parser.add_argument("--seconds", type=float, help="per point (default 5; quick 2)")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")],
                        help="concurrent clients per point (default 1,256; quick 1,16)")
    parser.add_argument("--query-workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                        help="query frontend processes to measure, e.g. 1,8")
    parser.add_argument("--slo-ms", type=int, default=100, help="the app's latency objective")
    parser.add_argument("--wrk-cpus", help="cores for wrk alone, e.g. 12-15 (the rest serve)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where <date>-gpu.json/.md go")
    parser.add_argument("--report", type=Path, help="only write the Markdown of this JSON file beside it")
    args = parser.parse_args(argv)
    if args.report:
        text = markdown(json.loads(args.report.read_text()))
        args.report.with_suffix(".md").write_text(text)
        print(text)
        return 0
    args.seconds = args.seconds or (2 if args.quick else 5)
    args.clients = args.clients or ([1, 16] if args.quick else [1, 256])
    if args.wrk_cpus:
        reserve_cores(args.wrk_cpus)

    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here; run with --device cpu (e.g. --device cpu --quick)")
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    args.out.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    stem = args.out / f"{date}-gpu{'-quick' if args.quick else ''}"
    data = {"date": date, "card": card, "seconds": args.seconds, "clients": args.clients, "slo_ms": args.slo_ms,
            "wrk_cpus": args.wrk_cpus and f"cores {args.wrk_cpus}",
            "machine": f"{report.machine()}, torch {torch.__version__}", "bare": {}, "served": [], "errors": []}

    def save():
        stem.with_suffix(".json").write_text(json.dumps(data, indent=1))

    # 4 decimals, so that a JSON list is as short as a client would make it (about 7 bytes a number)
    values = np.round(np.random.default_rng(0).standard_normal((DISTINCT_INPUTS, PIXELS)), 4)
    print(f"ResNet-18 fp16 on {card}: bare PyTorch, then served ({args.seconds:g} s points)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-serving-") as scratch:
        scratch = Path(scratch)
        os.environ.setdefault("CLIPPER_STATE_DIR", str(scratch / "state"))
        for batch_size in BARE_BATCHES:
            data["bare"][str(batch_size)] = bare_pytorch(args.device, values.astype(np.float32), batch_size,
                                                         args.seconds, scratch)
            print(f"  bare, batch {batch_size}: {data['bare'][str(batch_size)]['images_per_s']:,.0f} images/s",
                  flush=True)
        save()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        measure_served(args, write_bodies(values, scratch), scratch, data, save)
    text = markdown(data)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"written: {stem}.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
