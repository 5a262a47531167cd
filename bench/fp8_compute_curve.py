"""fp8 compute's numerical effect on training: two LoRA runs on one fp8 base, same seed, weights and data.

Writes a random Flux-architecture model (BFL layout), random latents/text embeddings and one initial LoRA
(bench/train_step.py's fixtures), then trains it twice with fluxtrain_bench, `--steps` AdamW steps each, both
with the blocks' weights stored as float8_e4m3fn (fp8_base):
  off         the fp8 weights are upcast to the compute dtype on every call (fp8_compute=off)
  tensorwise  the input is quantised to e4m3 too (one scale per tensor) and `_scaled_mm` multiplies
              (fp8_compute=tensorwise; on the CPU only as libtorch's reference kernel, which the bench
              program reaches directly although `fluxtrain train` refuses fp8 compute on the CPU)
and prints both loss curves, the mean and largest |loss_tensorwise - loss_off| / loss_off, and how far apart
the two final LoRAs are, relative to how far training moved them. The figures go in docs/performance.md
("fp8 compute"). The same timestep and noise draws on both sides (one generator seed), so the curves
differ by the fp8 rounding of the activations alone.

    python bench/fp8_compute_curve.py                 # CPU, fp32, 30 steps (about 4 minutes on 2 cores)
    python bench/fp8_compute_curve.py --mode rowwise --device cuda --precision bf16   # on an fp8 GPU
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import train_step as ts  # noqa: E402  (its fixtures, run_json and commit)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--mode", default="tensorwise", choices=["tensorwise", "rowwise"], help="the fp8 compute side")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    # Small: libtorch's CPU _scaled_mm is a reference loop, about 50 ns per multiply-add (4 s for a
    # 320x1024x256 product on this 2-core machine, fp32 matmul 18 ms).
    p.add_argument("--latent", type=int, default=16, help="latent height = width (16: 64 image tokens)")
    p.add_argument("--txt-len", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--double", type=int, default=1)
    p.add_argument("--single", type=int, default=2)
    p.add_argument("--context-dim", type=int, default=64)
    p.add_argument("--vec-dim", type=int, default=32)
    p.add_argument("--checkpointing", type=int, default=0, choices=[0, 1],
                   help="gradient checkpointing (1 runs each checkpointed block's fp8 products twice)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--bench-bin", default=os.environ.get("FLUXTRAIN_BENCH", os.path.join(ts.ROOT, "build", "bench", "fluxtrain_bench")))
    p.add_argument("--workdir", default=None, help="keep the model, inputs and LoRAs here")
    p.add_argument("--json", default=None, help="also write both runs' raw results here")
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be at least 2")
    if a.hidden != 128 * a.heads:
        p.error(f"--hidden {a.hidden} / --heads {a.heads}: the head width must be Flux.1's 128")
    return a


def lora_distance(path_a: str, path_b: str, path_init: str) -> tuple[float, float]:
    """(||a - b|| / ||b||, ||a - b|| / ||b - init||) over every tensor of the two LoRA files."""
    from safetensors.torch import load_file
    a, b, init = load_file(path_a), load_file(path_b), load_file(path_init)
    if a.keys() != b.keys():
        raise SystemExit(f"benchmark: the two LoRAs hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    norm = sum(float(b[k].double().pow(2).sum()) for k in b)
    moved = sum(float((b[k].double() - init[k].double()).pow(2).sum()) for k in b if k in init)
    return math.sqrt(diff / norm), (math.sqrt(diff / moved) if moved > 0 else float("nan"))


def main(argv=None) -> int:
    a = parse_args(argv)
    work, tmp = ts.work_folder(a, "fluxtrain-fp8-")
    fixture_args = types.SimpleNamespace(hidden=a.hidden, heads=a.heads, double=a.double, single=a.single,
                                         context_dim=a.context_dim, vec_dim=a.vec_dim, seed=a.seed, batch_list=[1],
                                         latent=a.latent, txt_len=a.txt_len, bench_bin=a.bench_bin, rank=a.rank,
                                         alpha=a.alpha)
    _, model, inputs, lora = ts.write_fixtures(fixture_args, work)
    common = ["--model", model, "--inputs", inputs, "--steps", a.steps, "--warmup", 0, "--device", a.device,
              "--precision", a.precision, "--rank", a.rank, "--alpha", a.alpha, "--lr", a.lr, "--seed", a.seed,
              "--threads", a.threads, "--lora", lora, "--split-qkv", 1, "--fp8-base", 1,
              "--checkpointing", a.checkpointing]
    results = {}
    for mode in ("off", a.mode):
        saved = os.path.join(work, f"lora_{mode}.safetensors")
        results[mode] = ts.run_json([a.bench_bin, *common, "--fp8-matmul", mode, "--save-lora", saved])
        results[mode]["lora_file"] = saved
    off, fp8 = results["off"]["losses"], results[a.mode]["losses"]
    if not all(math.isfinite(x) for x in off + fp8):
        raise SystemExit(f"benchmark: a loss is not finite: off {off}, {a.mode} {fp8}")
    if off == fp8:
        raise SystemExit(f"benchmark: the {a.mode} run's losses equal the off run's bit for bit: fp8 compute did not "
                         "engage (no Linear took the fp8 path)")
    rel = [abs(x - y) / abs(y) for x, y in zip(fp8, off)]
    lora_rel, lora_rel_moved = lora_distance(results[a.mode]["lora_file"], results["off"]["lora_file"], lora)

    print(f"fp8 compute curve: {a.steps} AdamW steps (lr {a.lr}), LoRA rank {a.rank}, fp8 base, {a.device} "
          f"{a.precision}; model hidden {a.hidden}, {a.double}+{a.single} blocks, latent {a.latent}x{a.latent}, "
          f"{a.txt_len} text tokens; seed {a.seed}")
    print(f"date {datetime.date.today().isoformat()}, commit {ts.commit()}, {platform.processor() or platform.machine()}, "
          f"{results['off'].get('threads')} threads")
    print(f"{'step':>4}  {'loss off':>12}  {'loss ' + a.mode:>16}  {'|d|/loss':>9}")
    for i, (x, y, r) in enumerate(zip(off, fp8, rel)):
        print(f"{i + 1:>4}  {x:>12.6f}  {y:>16.6f}  {r:>9.2e}")
    summary = {
        "mean_rel_loss_diff": sum(rel) / len(rel),
        "max_rel_loss_diff": max(rel),
        "final_lora_rel_diff": lora_rel,
        "final_lora_rel_diff_of_update": lora_rel_moved,
        "median_step_ms_off": results["off"]["median_ms"],
        f"median_step_ms_{a.mode}": results[a.mode]["median_ms"],
    }
    print(f"mean |loss_{a.mode} - loss_off| / loss_off = {summary['mean_rel_loss_diff']:.3e} "
          f"(largest {summary['max_rel_loss_diff']:.3e})")
    print(f"final LoRA: ||{a.mode} - off|| / ||off|| = {lora_rel:.3e}; / ||off - initial|| = {lora_rel_moved:.3e}")
    print(f"median step: off {results['off']['median_ms']:.0f} ms, {a.mode} {results[a.mode]['median_ms']:.0f} ms "
          f"({'the CPU runs _scaled_mm as a slow reference: no speed figure' if a.device == 'cpu' else a.device})")
    if a.json:
        ts.write_atomic(a.json, json.dumps({"args": vars(a), "summary": summary, "runs": results}, indent=1))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
