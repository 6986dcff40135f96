"""Which GPUs a cluster's model replicas may use, and which ones each replica gets.

A replica sees only its own devices through CUDA_VISIBLE_DEVICES (empty for a replica that
asked for none, so a CPU model never takes GPU memory). Devices are handed out to the
least used first, in order, which is round-robin over the machine's GPUs as replicas are
added; a replica never gets the same device twice, so asking for more GPUs per replica than
the machine has is refused.
"""
import os
import re
import subprocess
from collections import Counter
from typing import List, Mapping, Optional

# Overrides detection: "4" means devices 0..3 (a machine nvidia-smi cannot see into, or a test).
GPU_COUNT_VARIABLE = "CLIPPER_GPU_COUNT"
DEVICES_VARIABLE = "CUDA_VISIBLE_DEVICES"
MAX_GPUS = 1024                    # more than any machine has


def machine_gpus(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """The device ids replicas may be given: CLIPPER_GPU_COUNT if set, else this process's
    CUDA_VISIBLE_DEVICES if set, else what ``nvidia-smi -L`` lists (none without it)."""
    environ = os.environ if environ is None else environ
    count = environ.get(GPU_COUNT_VARIABLE, "").strip()
    if count:
        # A negative count would read as none, and a huge one is a list as long: refused.
        if not re.fullmatch(r"[0-9]+", count) or int(count) > MAX_GPUS:
            raise ValueError(f"{GPU_COUNT_VARIABLE} must be a number of GPUs (0 to {MAX_GPUS}), not {count!r}")
        return [str(index) for index in range(int(count))]
    if DEVICES_VARIABLE in environ:
        return [device.strip() for device in environ[DEVICES_VARIABLE].split(",") if device.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = [line for line in listing.stdout.splitlines() if line.startswith("GPU ")]
    return [str(index) for index in range(len(gpus))] if listing.returncode == 0 else []


def pick_devices(devices: List[str], count: int, in_use: Counter) -> List[str]:
    """``count`` distinct devices, the least used first (ties: in the machine's order)."""
    if count > len(devices):
        have = f"{len(devices)} ({','.join(devices)})" if devices else "none"
        raise ValueError(
            f"{count} GPUs per replica were asked for, but this cluster has {have}. Ask for "
            f"fewer, or, if GPUs were missed, set {GPU_COUNT_VARIABLE} (or {DEVICES_VARIABLE}) "
            "before start_clipper()")
    chosen = sorted(range(len(devices)), key=lambda index: (in_use[devices[index]], index))[:count]
    return [devices[index] for index in sorted(chosen)]


def device_environment(devices: List[str]) -> dict:
    return {DEVICES_VARIABLE: ",".join(devices)}
