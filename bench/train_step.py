"""Benchmark: fluxtrain's LoRA training step against the same step in PyTorch eager Python.

Writes a random Flux-architecture model (BFL layout), random latents/text embeddings and one initial LoRA,
then for each batch size runs fluxtrain_bench (C++) and bench/baseline_diffusers.py (diffusers + PEFT)
in separate processes, alternating which goes first, `--repeats` times each, and prints a table: median
step time, peak memory, their ratios (fluxtrain / eager), and the memory each extra image costs (the
least-squares slope of peak memory over the batch sizes). See bench/README.md and docs/performance.md.

Fair by construction: both sides get the same THP_MEM_ALLOC_ENABLE (libc10's huge-page switch, which the
fluxtrain executable turns on; --thp), the same checkpointing policy (every block but the last, fluxtrain's;
--eager-checkpointing all gives the baseline diffusers' every-block default instead) and the same threads.

Both sides must compute the same thing: their first-step losses (and gradient norms) are compared on the
same weights and inputs, and a mismatch beyond the tolerance fails the run (exit 1). The timing targets
are figures to read, never asserted.

    python bench/train_step.py                                  # CPU, fp32, the mid-size model
    python bench/train_step.py --device cuda --precision bf16   # on a GPU
    python bench/train_step.py --smoke                          # seconds: tiny settings (CTest)
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
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from reference import tiny_models as tm  # noqa: E402

MIB = 1024 * 1024
LABELS = {"losses": "loss", "grad_norms": "gradient norm"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: cpu 5, cuda 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per process, first (default: cpu 1, cuda 3)")
    p.add_argument("--repeats", type=int, default=None,
                   help="processes per side and batch size, interleaved (default: 3)")
    p.add_argument("--latent", type=int, default=64, help="latent height = width (64 = a 512x512 image)")
    p.add_argument("--txt-len", type=int, default=128, help="T5 tokens")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=6, help="attention heads (hidden / heads must be Flux.1's head width 128)")
    p.add_argument("--double", type=int, default=4, help="double-stream blocks")
    p.add_argument("--single", type=int, default=8, help="single-stream blocks")
    p.add_argument("--context-dim", type=int, default=4096, help="T5 width")
    p.add_argument("--vec-dim", type=int, default=768, help="CLIP pooled width")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--checkpointing", default="on", choices=["on", "off"])
    p.add_argument("--keep-products", default="outputs", choices=["none", "outputs", "all"],
                   help="fluxtrain's checkpoint_keep_products (its default: outputs)")
    p.add_argument("--thp", default="on", choices=["on", "off"],
                   help="THP_MEM_ALLOC_ENABLE for both sides: huge pages for tensors >= 2 MiB (fluxtrain's executable: on)")
    p.add_argument("--eager-checkpointing", default="same", choices=["same", "all"],
                   help="the baseline's checkpointed blocks: same (every block but the last, as fluxtrain) or all "
                        "(diffusers' enable_gradient_checkpointing() default)")
    p.add_argument("--sides", default="fluxtrain,eager",
                   help="which sides to run: fluxtrain,eager (the comparison) or one of them (A/B runs of one side "
                        "at two commits; no ratios, no first-step check)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: fp32 on cpu, bf16 on cuda")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads on both sides (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings for a quick check: hidden 128 (1 head), 1+2 blocks, 16x16 latents, batches 1,2, 2 steps")
    p.add_argument("--bench-bin", default=os.environ.get("FLUXTRAIN_BENCH", os.path.join(ROOT, "build", "bench", "fluxtrain_bench")),
                   help="the fluxtrain_bench program (default: $FLUXTRAIN_BENCH or build/bench/fluxtrain_bench)")
    p.add_argument("--python", default=sys.executable, help="Python for the baseline (torch, diffusers, peft)")
    p.add_argument("--workdir", default=None, help="keep the model and inputs here (default: a temporary folder)")
    p.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    p.add_argument("--json", default=None, help="also write every raw result to this file")
    a = p.parse_args(argv)
    if a.smoke:
        a.batches, a.steps, a.warmup, a.latent, a.txt_len = "1,2", 2, 1, 16, 16
        a.hidden, a.heads, a.double, a.single, a.context_dim, a.vec_dim = 128, 1, 1, 2, 64, 32
        # Tiny ops on a shared machine: OpenMP threads waiting on each other cost more than they gain.
        a.threads = a.threads or 1
        a.repeats = a.repeats if a.repeats is not None else 1
    cuda = a.device == "cuda"
    if a.precision is None:
        a.precision = "bf16" if cuda else "fp32"
    a.steps = a.steps if a.steps is not None else (10 if cuda else 5)
    a.warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    a.repeats = a.repeats if a.repeats is not None else 3
    a.side_list = [s.strip() for s in a.sides.split(",") if s.strip()]
    if not a.side_list or any(s not in ("fluxtrain", "eager") for s in a.side_list) or len(set(a.side_list)) != len(a.side_list):
        p.error(f"--sides '{a.sides}': expected fluxtrain,eager, fluxtrain or eager")
    if a.steps < 1 or a.warmup < 0 or a.repeats < 1:
        p.error(f"--steps {a.steps} / --warmup {a.warmup} / --repeats {a.repeats}: need steps >= 1, warmup >= 0, repeats >= 1")
    try:
        a.batch_list = sorted({int(b) for b in a.batches.split(",") if b.strip()})
    except ValueError:
        a.batch_list = []
    if not a.batch_list or min(a.batch_list) < 1:
        p.error(f"--batches: '{a.batches}' must list positive batch sizes, e.g. 1,2,4,8")
    if a.hidden != 128 * a.heads:
        p.error(f"--hidden {a.hidden} / --heads {a.heads}: the head width must be Flux.1's 128, whose RoPE axes "
                "(16, 56, 56) a single-file model implies (use --hidden 128 x heads)")
    return a


def write_fixtures(a, work: str) -> tuple:
    import torch
    from safetensors.torch import save_file

    cfg = replace(tm.FLUX_DEV, hidden_size=a.hidden, num_heads=a.heads, depth=a.double, depth_single_blocks=a.single,
                  context_in_dim=a.context_dim, vec_in_dim=a.vec_dim)
    model = os.path.join(work, "flux.safetensors")
    save_file(tm.random_state_dict(tm.flux_shapes(cfg), torch.float32, a.seed), model)
    g = torch.Generator().manual_seed(a.seed + 1)
    n = max(a.batch_list)
    inputs = os.path.join(work, "inputs.safetensors")
    save_file({"latents": torch.randn(n, 16, a.latent, a.latent, generator=g),
               "t5": torch.randn(n, a.txt_len, a.context_dim, generator=g),
               "clip_pooled": torch.randn(n, a.vec_dim, generator=g)}, inputs)
    lora = os.path.join(work, "lora_init.safetensors")
    run_json([a.bench_bin, "--model", model, "--write-lora", lora, "--rank", str(a.rank), "--alpha", str(a.alpha),
              "--split-qkv", "1", "--seed", str(a.seed)])
    return cfg, model, inputs, lora


def run_json(cmd, env=None) -> dict:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: {' '.join(map(str, cmd))}\nfailed with exit status {proc.returncode}:\n"
                         f"{proc.stderr[-4000:]}{proc.stdout[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"benchmark: {' '.join(map(str, cmd))} printed no JSON result:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit() -> str:
    """The checkout's commit, '+changes' when the tree differs from it ('unknown' outside git)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" +changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def slope(points) -> float:
    """Least-squares slope of (batch, bytes)."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def main(argv=None) -> int:
    a = parse_args(argv)
    if not os.path.exists(a.bench_bin):
        raise SystemExit(f"benchmark: no fluxtrain_bench at {a.bench_bin}; build it (cmake --build build --target "
                         "fluxtrain_bench) or pass --bench-bin / set FLUXTRAIN_BENCH")
    tmp = None
    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
        work = a.workdir
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fluxtrain-bench-")
        work = tmp.name
    cfg, model, inputs, lora = write_fixtures(a, work)
    common = ["--model", model, "--inputs", inputs, "--steps", a.steps, "--warmup", a.warmup,
              "--checkpointing", int(a.checkpointing == "on"), "--device", a.device, "--precision", a.precision,
              "--rank", a.rank, "--alpha", a.alpha, "--lr", a.lr, "--seed", a.seed, "--threads", a.threads,
              "--lora", lora]
    sides = {"fluxtrain": [a.bench_bin, "--split-qkv", 1, "--keep-products", a.keep_products] + common,
             "eager": [a.python, os.path.join(HERE, "baseline_diffusers.py"),
                       "--checkpoint-last", int(a.eager_checkpointing == "all")] + common}
    # libc10 reads THP_MEM_ALLOC_ENABLE when it loads, in both programs: the same value for both sides.
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if a.thp == "on" else "0")
    policy = ("every block but the last on both sides" if a.eager_checkpointing == "same" else
              "fluxtrain every block but the last, eager every block")
    print(f"model: hidden {cfg.hidden_size}, {cfg.num_heads} heads, {cfg.depth} double + {cfg.depth_single_blocks} "
          f"single blocks; latents {a.latent}x{a.latent} ({(a.latent // 2) ** 2} image tokens) + {a.txt_len} text "
          f"tokens; LoRA rank {a.rank} alpha {a.alpha:g} (split q/k/v); AdamW; checkpointing {a.checkpointing} "
          f"({policy}; fluxtrain keeps attention and products '{a.keep_products}'); {a.device} {a.precision}; THP_MEM_ALLOC_ENABLE {env['THP_MEM_ALLOC_ENABLE']} both sides; {a.warmup} warm-up + {a.steps} timed steps x {a.repeats} processes per side",
          flush=True)

    results = {}  # (side, batch) -> list of result dicts
    for batch in a.batch_list:
        for r in range(a.repeats):
            order = a.side_list if r % 2 == 0 else a.side_list[::-1]
            for side in order:
                res = run_json(sides[side] + ["--batch", batch], env)
                results.setdefault((side, batch), []).append(res)
                print(f"  batch {batch} {side:9s} run {r + 1}: {res['median_ms']:.0f} ms/step "
                      f"({res['median_cpu_ms']:.0f} ms CPU), "
                      f"peak {res['peak_bytes'] / MIB:.0f} MiB, first loss {res['losses'][0]:.6f}"
                      + (f", attention stash check {res['attention_stash_check']}" if "attention_stash_check" in res else "")
                      + (f", {res['checkpointed_blocks_per_step']:g} blocks checkpointed" if "checkpointed_blocks_per_step" in res else ""),
                      flush=True)

    both = len(a.side_list) == 2
    # Honesty check: the two sides start from the same weights, LoRA and inputs, so the first step's loss
    # and gradient norm must agree (fp32: to float rounding; bf16: to bf16 rounding).
    loss_tol, grad_tol = (1e-4, 1e-3) if a.precision == "fp32" else (3e-2, 1e-1)
    failures = []
    for batch in a.batch_list if both else []:
        f, e = results[("fluxtrain", batch)][0], results[("eager", batch)][0]
        if f["lora_parameters"] != e["lora_parameters"]:
            failures.append(f"batch {batch}: LoRA parameters {f['lora_parameters']} (fluxtrain) vs {e['lora_parameters']} (eager)")
        for key, tol in (("losses", loss_tol), ("grad_norms", grad_tol)):
            x, y = f[key][0], e[key][0]
            rel = abs(x - y) / max(abs(y), 1e-12)
            print(f"check batch {batch}: first-step {LABELS[key]} fluxtrain {x:.7g} eager {y:.7g} "
                  f"(rel. diff {rel:.1e}, tolerance {tol:.0e})")
            if not rel <= tol:
                failures.append(f"batch {batch}: first-step {LABELS[key]} differs by {rel:.2e} (> {tol:.0e})")

    rows, spread = [], {side: 0.0 for side in a.side_list}
    for batch in a.batch_list:
        row = {"batch": batch}
        for side in a.side_list:
            runs = results[(side, batch)]
            row[f"{side}_ms"] = statistics.median(t for res in runs for t in res["step_ms"])
            row[f"{side}_cpu_ms"] = statistics.median(t for res in runs for t in res["step_cpu_ms"])
            row[f"{side}_peak"] = statistics.median(res["peak_bytes"] for res in runs)
            medians = [res["median_cpu_ms"] if a.device == "cpu" else res["median_ms"] for res in runs]
            spread[side] = max(spread[side], max(medians) / min(medians) - 1)
        rows.append(row)
    per_image = {side: slope([(r["batch"], r[f"{side}_peak"]) for r in rows]) for side in a.side_list}

    # On a CPU the process CPU time is shown too: on a shared machine it is the steadier figure (wall time
    # also counts the time other programs held the cores).
    cpu = a.device == "cpu"
    unit = "MiB (peak RSS over the steps - RSS before the model)" if cpu else "MiB (max_memory_allocated)"
    columns = [("ms/step", "ms", "time ratio")] + ([("CPU ms/step", "cpu_ms", "CPU-time ratio")] if cpu else []) + \
              [("peak MiB", "peak", "memory ratio")]
    header = ["batch"]
    for label, _, ratio_label in columns:
        header += [f"{side} {label}" for side in a.side_list] + ([ratio_label] if both else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["batch"]]
        for _, key, _ in columns:
            scale = MIB if key == "peak" else 1
            cells += [f"{r[f'{side}_{key}'] / scale:.0f}" for side in a.side_list]
            if both:
                cells.append(f"{r[f'fluxtrain_{key}'] / r[f'eager_{key}']:.2f}")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    extra = "Memory per extra image: " + ", ".join(f"{side} {per_image[side] / MIB:.1f} MiB" for side in a.side_list)
    if both:
        ratio = per_image["fluxtrain"] / per_image["eager"] if per_image["eager"] else float("nan")
        extra += f" (ratio {ratio:.2f})"
    extra += (f". Memory unit: {unit}. Spread of the per-process median {'CPU ' if cpu else ''}step times "
              f"(largest / smallest - 1, worst batch): " + ", ".join(f"{side} {100 * spread[side]:.1f} %" for side in a.side_list) + ".")
    if both:
        extra += " Targets: time ratio <= 0.8, memory ratio <= 0.7."
    table = "\n".join(lines)
    print()
    print(table)
    print(extra)

    if a.markdown:
        cmd = "python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
        threads = results[(a.side_list[0], a.batch_list[0])][0]["threads"]
        text = (f"Command: `{cmd.strip()}`  \nDate: {datetime.date.today().isoformat()}, commit `{commit()}`  \n"
                f"Machine: {platform.machine()} {os.cpu_count()} CPUs ({threads} torch threads), {a.device} {a.precision}  \n"
                f"Model: hidden {cfg.hidden_size}, {cfg.depth} double + {cfg.depth_single_blocks} single blocks, "
                f"{a.latent}x{a.latent} latents, {a.txt_len} text tokens, LoRA rank {a.rank} (split q/k/v), AdamW, "
                f"checkpointing {a.checkpointing} ({policy}; fluxtrain keeps attention and products '{a.keep_products}'); "
                f"THP_MEM_ALLOC_ENABLE {env['THP_MEM_ALLOC_ENABLE']} both sides; "
                f"{a.warmup} warm-up + {a.steps} timed steps x {a.repeats} "
                f"processes per side\n\n{table}\n\n{extra}\n")
        write_atomic(a.markdown, text)
    if a.json:
        write_atomic(a.json, json.dumps({f"{s}/{b}": v for (s, b), v in results.items()}, indent=1))
    if failures:
        print("MISMATCH: the two sides do not compute the same step:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
