"""Benchmark: data-parallel scaling on the CPU — throughput of 1 rank against N ranks (Gloo on 127.0.0.1).

Writes the data-wait benchmark's model set (`--models wide`: Flux.1's text widths and latent channels around
a small transformer, bench/data_wait.py) and image dataset, fills the caches once (`fluxtrain cache`), then
runs `fluxtrain train` with 1 rank x batch B and with `--nproc N` ranks x batch B each (the same per-device
batch: N times the images per step), each rank on `--threads` threads (OMP_NUM_THREADS), alternating which
goes first (`--repeats`). Throughput is images per second over the steps after the first two (median step
time from metrics.jsonl, rank 0's wall time of each optimizer step, the gradient all-reduce included);
scaling efficiency = (throughput of N ranks / throughput of 1 rank) / N. The target (issue 21) is >= 0.9 on
2 ranks of 1 thread on a machine with 2 free cores; it is printed, never asserted.

    python bench/scaling.py                   # 2 ranks, 1 thread each, batch 2, 256 px, 30 steps, 2 repeats
    python bench/scaling.py --device cuda --nproc 8 --threads 0   # a lent machine with 8 GPUs
    python bench/scaling.py --smoke           # seconds: tiny settings (the CTest entry bench.scaling_smoke)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import data_wait  # noqa: E402  (its model set, dataset and environment)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "fluxtrain"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", choices=["wide", "tiny"], default="wide")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank; 0 = leave it")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=2, help="per device")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny settings: make-tiny models, 12 images, 64 px, 5 steps")
    p.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.images, a.resolution, a.steps, a.repeats = "tiny", 12, 64, 5, 1
    return a


def train_once(a, work: str, name: str, nproc: int) -> float:
    """Images per second of one run over its steps after the first two."""
    out = os.path.join(work, "runs", name)
    env = data_wait.base_env(a, work, out, PARAMS_NUM_PROCESSES=nproc, PARAMS_SAVE_STATE_EVERY_MINUTES=0,
                             PARAMS_COLLECTIVE_TIMEOUT_SECONDS=120)
    data_wait.run([a.bin, "train"], env=env)
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"), encoding="utf-8")]
    if len(lines) != a.steps:
        raise SystemExit(f"benchmark: {out}/metrics.jsonl has {len(lines)} lines, expected {a.steps}")
    steps = [l["step_seconds"] for l in lines[2:]] or [l["step_seconds"] for l in lines]
    return a.batch * nproc / statistics.median(steps)


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv=None) -> int:
    a = parse_args(argv)
    if not os.path.exists(a.bin):
        raise SystemExit(f"benchmark: {a.bin} does not exist; build it (`make build`) or pass --bin")
    a.threads = a.threads or None
    with tempfile.TemporaryDirectory(prefix="fluxtrain-scaling-") as work:
        if a.models == "tiny":
            data_wait.run([a.bin, "make-tiny", "--out", os.path.join(work, "models"), "--seed", "1"])
        else:
            data_wait.write_wide_models(os.path.join(work, "models"))
        data_wait.write_dataset(os.path.join(work, "data"), a.images, a.resolution)
        data_wait.write_dataset_config(work, a.resolution)
        data_wait.run([a.bin, "cache"], env=data_wait.base_env(a, work, os.path.join(work, "runs", "cache")))
        one, many = [], []
        for r in range(a.repeats):
            order = [(1, one), (a.nproc, many)] if r % 2 == 0 else [(a.nproc, many), (1, one)]
            for n, into in order:
                into.append(train_once(a, work, f"n{n}-r{r}", n))
    t1, tn = statistics.median(one), statistics.median(many)
    efficiency = tn / t1 / a.nproc
    rows = [
        "| ranks | threads per rank | per-device batch | images / s (median of runs) | scaling efficiency |",
        "|---|---|---|---|---|",
        f"| 1 (baseline) | {a.threads or 'all'} | {a.batch} | {t1:.2f} | 1 |",
        f"| {a.nproc} | {a.threads or 'all'} | {a.batch} | {tn:.2f} | {efficiency:.3f} (target >= 0.9) |",
    ]
    header = (f"`python bench/scaling.py{' --smoke' if a.smoke else ''} --nproc {a.nproc}` on {a.device}, "
              f"{a.models} models, {a.resolution} px, {a.steps} steps x {a.repeats} runs each; "
              f"{datetime.date.today()}, commit {commit()}, {platform.machine()} with {os.cpu_count()} cores")
    data_wait.emit(header + "\n\n" + "\n".join(rows) + "\n", a.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
