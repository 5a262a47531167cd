#!/usr/bin/env python3
"""The memory planner at Flux.1 dev's full size on the CPU (issue 20): writes a random 12B transformer with
fp8 (e4m3) block weights in BFL layout (the real file's keys and shapes; ~12 GB on disk), the tiny encoders
beside it (`fluxtrain make-tiny`; the step reads no encoder), and runs

    fluxtrain plan --calibrate --calibrate-steps 1 --device cpu --precision fp32 --resolution R
                   --t5xxl-max-token-length T --train-batch-size 1   (the seed's LoRA, Prodigy, fp8 base)

which loads the model, takes one real training step on random inputs and prints the predicted and the
measured live peak of the tensors (the caching CPU allocator's count). Prints one markdown row; the figure
goes to docs/performance.md.

    python bench/full_size_plan.py [--work DIR] [--resolution 128] [--text-tokens 64] [--keep]

Needs ~25 GB of disk in --work and ~16 GB of free memory; on two cores the step takes minutes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from reference import tiny_models as tm  # noqa: E402


def write_model(path: str, seed: int) -> None:
    """Flux.1 dev's tensors, random, block Linear weights as float8_e4m3fn, the rest bf16, one at a time."""
    import torch
    from safetensors.torch import save_file

    shapes = tm.flux_shapes(tm.FLUX_DEV)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        in_block = name.startswith(("double_blocks.", "single_blocks.")) and name.endswith(".weight") and len(shape) == 2
        if len(shape) >= 2:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
        elif name.endswith("scale"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.05 * torch.randn(shape, generator=g)
        out[name] = t.to(torch.float8_e4m3fn if in_block else torch.bfloat16).contiguous()
    save_file(out, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/fluxtrain-full-size")
    p.add_argument("--fluxtrain", default=os.environ.get("FLUXTRAIN_BIN", "build/fluxtrain"))
    p.add_argument("--resolution", default="128")
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the 12 GB model for the next run")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    model = os.path.join(a.work, "flux1-dev.safetensors")
    if not os.path.exists(os.path.join(a.work, "ae.safetensors")):
        tiny = os.path.join(a.work, "tiny")
        subprocess.run([a.fluxtrain, "make-tiny", "--out", tiny], check=True, capture_output=True)
        for f in os.listdir(tiny):
            if f != "flux1-dev.safetensors":
                shutil.copy(os.path.join(tiny, f), os.path.join(a.work, f))
        shutil.rmtree(tiny)
    if not os.path.exists(model):
        started = time.time()
        write_model(model + ".part", 7)
        os.rename(model + ".part", model)
        print(f"wrote {model} ({os.path.getsize(model) / 1e9:.1f} GB) in {time.time() - started:.0f} s", flush=True)
    out = os.path.join(a.work, "plan.json")
    cmd = [a.fluxtrain, "plan", "--model-dir", a.work, "--device", "cpu", "--precision", "fp32", "--resolution",
           a.resolution, "--t5xxl-max-token-length", str(a.text_tokens), "--train-batch-size", "1", "--batches", "1",
           "--calibrate", "--calibrate-steps", "1", "--json", out]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMS_")}
    env["OMP_NUM_THREADS"] = str(a.threads)
    started = time.time()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.time() - started
    plan = json.load(open(out))
    c = plan["calibration"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\nCommand: python bench/full_size_plan.py --resolution {a.resolution} --text-tokens {a.text_tokens}")
    print(f"Date: {datetime.date.today()}, commit {commit}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"{a.threads} threads, whole run {seconds:.0f} s\n")
    print("| model | bucket | text tokens | batch | predicted peak | measured peak | error | step s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| Flux.1 dev (12B, fp8 blocks, random) | {plan['resolution'][0]}x{plan['resolution'][1]} | "
          f"{plan['text_tokens']} | 1 | {c['predicted_peak_bytes'] / 1e9:.2f} GB | {c['measured_peak_bytes'] / 1e9:.2f} GB | "
          f"{c['error'] * 100:+.1f} % | {c['measured_seconds_per_step']:.0f} |")
    if not a.keep:
        shutil.rmtree(a.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
