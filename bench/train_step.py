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
GIB = 1024 * MIB
FALLBACK_LARGEST = 8  # the largest batch when the planner gives none
# spec/performance.md: H100 bf16 dense, measured on random data (the H200 has the same compute)
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}
LABELS = {"losses": "loss", "grad_norms": "gradient norm"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--batches", default="1,2,4,8",
                   help="comma-separated batch sizes; 'planner' stands for the planner's largest batch for --vram "
                        f"(`fluxtrain plan`; {FALLBACK_LARGEST} when it gives none)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: cpu 5, cuda 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per process, first (default: cpu 1, cuda 3)")
    p.add_argument("--repeats", type=int, default=None,
                   help="processes per side and batch size, interleaved (default: 3)")
    p.add_argument("--latent", type=int, default=64, help="latent height = width (64 = a 512x512 image)")
    p.add_argument("--resolution", default=None,
                   help="image width,height in pixels (kohya's order, e.g. 1280,768: 160x96 latents); overrides --latent")
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
    p.add_argument("--fp8-base", default="off", choices=["off", "on"],
                   help="fluxtrain's side stores the blocks' weights in fp8 (kohya --fp8_base, the seed's setting) and "
                        "computes in the compute dtype; the eager side keeps its own precision. The first-step check "
                        "is then reported, not enforced (the two sides multiply different weights)")
    p.add_argument("--fp8-matmul", default="off", choices=["off", "tensorwise", "rowwise"],
                   help="with --fp8-base on: how fluxtrain multiplies the fp8 weights (off: upcast, as kohya)")
    p.add_argument("--one-process", action="store_true",
                   help="one process per side measures every batch size in turn (no repeats): a large model is "
                        "loaded once per side. On CUDA a batch that runs out of memory is reported as OOM")
    p.add_argument("--fluxtrain-bin", default=os.environ.get("FLUXTRAIN_BIN", os.path.join(ROOT, "build", "fluxtrain")),
                   help="the fluxtrain program, for its memory planner (`fluxtrain plan`; default $FLUXTRAIN_BIN or "
                        "build/fluxtrain)")
    p.add_argument("--vram", type=float, default=None,
                   help="GB of device memory for the planner's largest batch (default: the CUDA device's, none on cpu)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 TFLOP/s for MFU (default: 790 on an H100/H200, spec/performance.md's "
                        "measured figure; none elsewhere: MFU n/a)")
    p.add_argument("--fixture-device", default="cpu", choices=["cpu", "cuda"],
                   help="where the random model is drawn (cuda: seconds for the 12B model, written in the compute "
                        "dtype); a --workdir that holds the same fixture is reused either way")
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
    a.latent_h = a.latent_w = a.latent
    if a.resolution:
        try:
            width, height = (int(v) for v in a.resolution.replace("x", ",").split(","))
        except ValueError:
            width = height = 0
        if width <= 0 or height <= 0 or width % 16 or height % 16:
            p.error(f"--resolution '{a.resolution}': expected WIDTH,HEIGHT in pixels, multiples of 16 (e.g. 1280,768)")
        a.latent_w, a.latent_h = width // 8, height // 8
    a.want_planner_batch = "planner" in [b.strip() for b in a.batches.split(",")]
    try:
        a.batch_list = sorted({int(b) for b in a.batches.split(",") if b.strip() and b.strip() != "planner"})
    except ValueError:
        a.batch_list = []
    if (not a.batch_list and not a.want_planner_batch) or (a.batch_list and min(a.batch_list) < 1):
        p.error(f"--batches: '{a.batches}' must list positive batch sizes, e.g. 1,2,4,8")
    if a.hidden != 128 * a.heads:
        p.error(f"--hidden {a.hidden} / --heads {a.heads}: the head width must be Flux.1's 128, whose RoPE axes "
                "(16, 56, 56) a single-file model implies (use --hidden 128 x heads)")
    return a


def write_fixtures(a, work: str) -> tuple:
    """The random model and the initial LoRA in `work`; reused when `work` already holds them for the same
    settings (fixture.json), so the 12B model is written once."""
    import torch
    from safetensors.torch import save_file

    cfg = replace(tm.FLUX_DEV, hidden_size=a.hidden, num_heads=a.heads, depth=a.double, depth_single_blocks=a.single,
                  context_in_dim=a.context_dim, vec_in_dim=a.vec_dim)
    model = os.path.join(work, "flux.safetensors")
    lora = os.path.join(work, "lora_init.safetensors")
    model_dtype = torch.bfloat16 if a.fixture_device == "cuda" else torch.float32
    key = {"shape": [a.hidden, a.heads, a.double, a.single, a.context_dim, a.vec_dim], "seed": a.seed,
           "fixture_device": a.fixture_device, "rank": a.rank, "alpha": a.alpha}
    marker = os.path.join(work, "fixture.json")
    try:
        with open(marker) as f:
            if json.load(f) == key and all(os.path.exists(x) for x in (model, lora)):
                print(f"fixtures: reusing the model in {work}", flush=True)
                return cfg, model, lora
    except (OSError, ValueError):
        pass
    if os.path.exists(marker):
        os.remove(marker)
    shapes = tm.flux_shapes(cfg)
    if a.fixture_device == "cuda":
        save_file(random_state_dict_on_cuda(shapes, model_dtype, a.seed), model)
        torch.cuda.empty_cache()
    else:
        save_file(tm.random_state_dict(shapes, torch.float32, a.seed), model)
    run_json([a.bench_bin, "--model", model, "--write-lora", lora, "--rank", str(a.rank), "--alpha", str(a.alpha),
              "--split-qkv", "1", "--seed", str(a.seed)])
    write_atomic(marker, json.dumps(key))
    return cfg, model, lora


def write_inputs(a, work: str) -> str:
    """Random latents, T5 and CLIP embeddings for the largest batch (the first B of them for batch B)."""
    import torch
    from safetensors.torch import save_file

    inputs = os.path.join(work, "inputs.safetensors")
    g = torch.Generator().manual_seed(a.seed + 1)
    n = max(a.batch_list)
    save_file({"latents": torch.randn(n, 16, a.latent_h, a.latent_w, generator=g),
               "t5": torch.randn(n, a.txt_len, a.context_dim, generator=g),
               "clip_pooled": torch.randn(n, a.vec_dim, generator=g)}, inputs)
    return inputs


def random_state_dict_on_cuda(shapes, dtype, seed: int) -> dict:
    """tiny_models.random_state_dict's distributions drawn on the GPU (seconds for 12B parameters instead of
    minutes on the CPU; other numbers than the CPU's for the same seed)."""
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            t = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).mul_(fan_in ** -0.5)
        elif name.endswith(("scale", "norm.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g, device="cuda")
        else:
            t = 0.02 * torch.randn(shape, generator=g, device="cuda")
        out[name] = t.to(dtype)
    return out


def step_flops(img_tokens: int, txt_tokens: int, hidden: int, blocks: int, checkpointing: bool) -> float:
    """FLOPs of one LoRA training step per image (spec/performance.md, "The floor"): the forward pass
    multiplies 12 d^2 weights per token and block (2 FLOPs each) and attention adds 4 L^2 d per block
    (L = image + text tokens); the step (forward, input gradients, no base weight gradients) is 2.3x the
    forward, 3.3x with gradient checkpointing (the forward once more)."""
    tokens = img_tokens + txt_tokens
    forward = blocks * (2 * 12 * hidden * hidden * tokens + 4 * tokens * tokens * hidden)
    return forward * (3.3 if checkpointing else 2.3)


def check_step_flops() -> None:
    """The spec's own figures for Flux.1 (d 3072, 19 + 38 blocks, 512 text tokens): forward at 1280x768
    ~70 TFLOP, at 1024x1024 ~74 TFLOP; the step at 1280x768 ~159 TFLOP without and ~228 TFLOP with
    checkpointing. Within 1.5 %, the rounding of the spec's figures."""
    figures = [((3840, False), 159e12), ((3840, True), 228e12), ((4096, True), 74e12 * 3.3)]
    for (img, ckpt), want in figures:
        got = step_flops(img, 512, 3072, 57, ckpt)
        if abs(got / want - 1) > 0.015:
            raise SystemExit(f"step_flops({img} image tokens, checkpointing {ckpt}) = {got / 1e12:.1f} TFLOP, "
                             f"the spec says ~{want / 1e12:.0f}: the formula does not match spec/performance.md")


def planner_prediction(a, model: str, batches: list, vram_gb) -> dict | None:
    """fluxtrain's memory planner (`fluxtrain plan`, train's options) for the bench settings: {"rows": {batch:
    predicted peak bytes}, "largest_batch": B or None}, or None when the command is missing or fails (the
    table then says n/a). The one place the bench settings become planner options."""
    if not os.path.exists(a.fluxtrain_bin):
        print(f"planner: no fluxtrain at {a.fluxtrain_bin}: planner columns n/a", flush=True)
        return None
    out = os.path.join(tempfile.mkdtemp(prefix="fluxtrain-plan-"), "plan.json")
    cmd = [a.fluxtrain_bin, "plan", "--model", model, "--resolution", f"{a.latent_w * 8},{a.latent_h * 8}",
           "--network-dim", a.rank, "--network-alpha", a.alpha, "--optimizer-type", "AdamW", "--split-qkv", "true",
           "--gradient-checkpointing", "true" if a.checkpointing == "on" else "false",
           "--checkpoint-keep-products", a.keep_products, "--fp8-base", "true" if a.fp8_base == "on" else "false",
           "--precision", a.precision, "--device", a.device, "--t5xxl-max-token-length", a.txt_len,
           "--prefetch-batches", "0", "--batches", ",".join(str(b) for b in batches), "--json", out]
    if vram_gb:
        cmd += ["--vram", f"{vram_gb:.1f}"]
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"exit status {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}")
        with open(out) as f:
            plan = json.load(f)
        rows = {int(r["batch"]): int(r["peak_bytes"]) for r in plan.get("rows", [])}
        largest = plan.get("largest_batch")
        return {"rows": rows, "largest_batch": int(largest) if largest else None, "command": " ".join(map(str, cmd))}
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"planner: `fluxtrain plan` gave no prediction ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
              "planner columns n/a", flush=True)
        return None


def device_facts(a) -> dict:
    """The device's name, memory (GB) and dense bf16 peak (TFLOP/s, None when unknown)."""
    facts = {"name": platform.machine(), "memory_gb": None, "peak_tflops": a.peak_tflops}
    if a.device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        facts.update(name=props.name, memory_gb=props.total_memory / 1e9)
        if facts["peak_tflops"] is None:
            facts["peak_tflops"] = next((v for k, v in PEAK_TFLOPS.items() if k in props.name), None)
    return facts


def run_json(cmd, env=None) -> dict:
    """The program's last JSON line."""
    return run_json_lines(cmd, env)[-1]


def run_json_lines(cmd, env=None) -> list:
    """Every JSON line the program printed (at least one)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: {' '.join(map(str, cmd))}\nfailed with exit status {proc.returncode}:\n"
                         f"{proc.stderr[-4000:]}{proc.stdout[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"benchmark: {' '.join(map(str, cmd))} printed no JSON result:\n{proc.stdout[-2000:]}")
    return [json.loads(line) for line in lines]


def batch_results(lines: list) -> dict:
    """batch -> its result, with the process's checks (lines without a batch) merged into each."""
    checks = {k: v for line in lines if "batch" not in line for k, v in line.items() if k != "side"}
    return {line["batch"]: dict(line, **checks) for line in lines if "batch" in line}


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


def fmt(value, spec: str, oom: bool = False) -> str:
    if oom:
        return "OOM"
    return "n/a" if value is None else format(value, spec)


def work_folder(a, prefix: str):
    """Checks that the benchmark program exists; returns (the work folder, its TemporaryDirectory or None):
    --workdir when given, else a fresh temporary folder."""
    if not os.path.exists(a.bench_bin):
        raise SystemExit(f"benchmark: no fluxtrain_bench at {a.bench_bin}; build it (cmake --build build --target "
                         "fluxtrain_bench) or pass --bench-bin / set FLUXTRAIN_BENCH")
    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
        return a.workdir, None
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    return tmp.name, tmp


def main(argv=None) -> int:
    a = parse_args(argv)
    check_step_flops()
    work, tmp = work_folder(a, "fluxtrain-bench-")
    facts = device_facts(a)
    vram_gb = a.vram if a.vram is not None else facts["memory_gb"]
    cfg, model, lora = write_fixtures(a, work)
    plan = planner_prediction(a, model, a.batch_list, vram_gb)
    if a.want_planner_batch:  # the planner's largest batch joins the list (before the inputs are written)
        largest = plan["largest_batch"] if plan and plan.get("largest_batch") else FALLBACK_LARGEST
        if not plan or not plan.get("largest_batch"):
            print(f"planner: no largest batch; using {FALLBACK_LARGEST}", flush=True)
        if largest not in a.batch_list:
            a.batch_list = sorted(set(a.batch_list) | {largest})
            plan = planner_prediction(a, model, a.batch_list, vram_gb) if plan else None
    inputs = write_inputs(a, work)
    common = ["--model", model, "--inputs", inputs, "--steps", a.steps, "--warmup", a.warmup,
              "--checkpointing", int(a.checkpointing == "on"), "--device", a.device, "--precision", a.precision,
              "--rank", a.rank, "--alpha", a.alpha, "--lr", a.lr, "--seed", a.seed, "--threads", a.threads,
              "--lora", lora]
    sides = {"fluxtrain": [a.bench_bin, "--split-qkv", 1, "--keep-products", a.keep_products,
                           "--fp8-base", int(a.fp8_base == "on"), "--fp8-matmul", a.fp8_matmul] + common,
             "eager": [a.python, os.path.join(HERE, "baseline_diffusers.py"),
                       "--checkpoint-last", int(a.eager_checkpointing == "all")] + common}
    # libc10 reads THP_MEM_ALLOC_ENABLE when it loads, in both programs: the same value for both sides.
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if a.thp == "on" else "0")
    policy = ("every block but the last on both sides" if a.eager_checkpointing == "same" else
              "fluxtrain every block but the last, eager every block")
    img_tokens = (a.latent_h // 2) * (a.latent_w // 2)
    fp8 = f"; fluxtrain fp8 base (matmul {a.fp8_matmul})" if a.fp8_base == "on" else ""
    repeats = 1 if a.one_process else a.repeats
    shape = (f"model: hidden {cfg.hidden_size}, {cfg.num_heads} heads, {cfg.depth} double + {cfg.depth_single_blocks} "
             f"single blocks; latents {a.latent_h}x{a.latent_w} ({img_tokens} image tokens) + {a.txt_len} text "
             f"tokens; LoRA rank {a.rank} alpha {a.alpha:g} (split q/k/v); AdamW; checkpointing {a.checkpointing} "
             f"({policy}; fluxtrain keeps attention and products '{a.keep_products}'); {a.device} {a.precision}{fp8}; "
             f"THP_MEM_ALLOC_ENABLE {env['THP_MEM_ALLOC_ENABLE']} both sides; {a.warmup} warm-up + {a.steps} timed "
             f"steps x {repeats} processes per side" + (" (one process per side for every batch)" if a.one_process else ""))
    print(shape, flush=True)

    def show(side, batch, r, res):
        if res.get("oom"):
            print(f"  batch {batch} {side:9s} run {r + 1}: OOM ({res.get('error', '')[:120]})", flush=True)
            return
        print(f"  batch {batch} {side:9s} run {r + 1}: {res['median_ms']:.0f} ms/step "
              f"({res['median_cpu_ms']:.0f} ms CPU), "
              f"peak {res['peak_bytes'] / MIB:.0f} MiB, first loss {res['losses'][0]:.6f}"
              + (f", attention stash check {res['attention_stash_check']}" if "attention_stash_check" in res else "")
              + (f", {res['checkpointed_blocks_per_step']:g} blocks checkpointed" if "checkpointed_blocks_per_step" in res else ""),
              flush=True)

    results = {}  # (side, batch) -> list of result dicts
    if a.one_process:
        for side in a.side_list:
            by_batch = batch_results(run_json_lines(sides[side] + ["--batches", ",".join(map(str, a.batch_list))], env))
            for batch in a.batch_list:
                res = by_batch.get(batch, {"side": side, "batch": batch, "oom": True, "error": "no result"})
                results[(side, batch)] = [res]
                show(side, batch, 0, res)
    else:
        for batch in a.batch_list:
            for r in range(a.repeats):
                order = a.side_list if r % 2 == 0 else a.side_list[::-1]
                for side in order:
                    res = batch_results(run_json_lines(sides[side] + ["--batch", batch], env))[batch]
                    results.setdefault((side, batch), []).append(res)
                    show(side, batch, r, res)

    def ok(side, batch):
        return not any(res.get("oom") for res in results[(side, batch)])

    both = len(a.side_list) == 2
    # Honesty check: the two sides start from the same weights, LoRA and inputs, so the first step's loss
    # and gradient norm must agree (fp32: to float rounding; bf16: to bf16 rounding). With fluxtrain's fp8
    # base the weights differ: the differences are printed, not enforced.
    enforce = a.fp8_base == "off"
    loss_tol, grad_tol = (1e-4, 1e-3) if a.precision == "fp32" else (3e-2, 1e-1)
    failures = []
    for batch in a.batch_list if both else []:
        if not (ok("fluxtrain", batch) and ok("eager", batch)):
            continue
        f, e = results[("fluxtrain", batch)][0], results[("eager", batch)][0]
        if f["lora_parameters"] != e["lora_parameters"]:
            failures.append(f"batch {batch}: LoRA parameters {f['lora_parameters']} (fluxtrain) vs {e['lora_parameters']} (eager)")
        for key, tol in (("losses", loss_tol), ("grad_norms", grad_tol)):
            x, y = f[key][0], e[key][0]
            rel = abs(x - y) / max(abs(y), 1e-12)
            print(f"check batch {batch}: first-step {LABELS[key]} fluxtrain {x:.7g} eager {y:.7g} "
                  f"(rel. diff {rel:.1e}, tolerance {tol:.0e}{'' if enforce else ', not enforced: fp8 base'})")
            if enforce and not rel <= tol:
                failures.append(f"batch {batch}: first-step {LABELS[key]} differs by {rel:.2e} (> {tol:.0e})")

    rows, spread = [], {side: 0.0 for side in a.side_list}
    for batch in a.batch_list:
        row = {"batch": batch}
        for side in a.side_list:
            runs = results[(side, batch)]
            if not ok(side, batch):
                row[f"{side}_oom"] = True
                continue
            row[f"{side}_ms"] = statistics.median(t for res in runs for t in res["step_ms"])
            row[f"{side}_cpu_ms"] = statistics.median(t for res in runs for t in res["step_cpu_ms"])
            row[f"{side}_peak"] = statistics.median(res["peak_bytes"] for res in runs)
            if all("peak_tensor_bytes" in res for res in runs):  # the planner's measure on the CPU
                row[f"{side}_tensor_peak"] = statistics.median(res["peak_tensor_bytes"] for res in runs)
            medians = [res["median_cpu_ms"] if a.device == "cpu" else res["median_ms"] for res in runs]
            spread[side] = max(spread[side], max(medians) / min(medians) - 1)
        rows.append(row)
    per_image = {side: slope([(r["batch"], r[f"{side}_peak"]) for r in rows if f"{side}_peak" in r])
                 for side in a.side_list}

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
            cells += ["OOM" if r.get(f"{side}_oom") else f"{r[f'{side}_{key}'] / scale:.0f}" for side in a.side_list]
            if both:
                have = all(f"{side}_{key}" in r for side in a.side_list)
                cells.append(f"{r[f'fluxtrain_{key}'] / r[f'eager_{key}']:.2f}" if have else "n/a")
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

    # The throughput table: images/s, MFU (spec/performance.md's FLOPs over the step time), peak memory and
    # the planner's error (measured / predicted - 1), one row per batch and side.
    flops_per_image = step_flops(img_tokens, a.txt_len, cfg.hidden_size, cfg.depth + cfg.depth_single_blocks,
                                 a.checkpointing == "on")
    peak = facts["peak_tflops"]
    predicted = plan["rows"] if plan else {}
    throughput = ["| batch | side | s/step | images/s | TFLOP/step | TFLOP/s | MFU | peak GiB | planner GiB | planner error |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    raw_rows = []
    for r in rows:
        for side in a.side_list:
            batch, oom = r["batch"], bool(r.get(f"{side}_oom"))
            seconds = None if oom else r[f"{side}_ms"] / 1000
            flops = flops_per_image * batch
            tflops = None if oom else flops / seconds / 1e12
            measured = None if oom else r[f"{side}_peak"]
            pred = predicted.get(batch) if side == "fluxtrain" else None
            # The planner predicts the tensors' live peak: on CUDA the measured peak; on the CPU the caching
            # allocator's count of the tensors (the RSS also holds libraries and the allocator's slack).
            tensors = None if oom else r.get(f"{side}_tensor_peak", measured)
            error = tensors / pred - 1 if (pred and tensors) else None
            raw_rows.append({"batch": batch, "side": side, "oom": oom, "step_s": seconds,
                             "images_per_s": None if oom else batch / seconds, "tflop_per_step": flops / 1e12,
                             "tflops": tflops, "mfu": tflops / peak if (tflops and peak) else None,
                             "peak_bytes": measured, "planner_peak_bytes": pred, "planner_error": error})
            x = raw_rows[-1]
            throughput.append("| " + " | ".join([
                str(batch), side, fmt(seconds, ".3f", oom), fmt(x["images_per_s"], ".2f", oom), f"{flops / 1e12:.4g}",
                fmt(tflops, ".4g", oom), fmt(None if x["mfu"] is None else 100 * x["mfu"], ".1f", oom) + ("" if oom or x["mfu"] is None else " %"),
                fmt(None if measured is None else measured / GIB, ".2f", oom),
                fmt(None if not pred else pred / GIB, ".2f"),
                fmt(None if error is None else 100 * error, "+.1f") + ("" if error is None else " %")]) + " |")
    throughput_table = "\n".join(throughput)
    memory_text = f"{vram_gb:.0f} GB" if vram_gb else "the device's memory"
    largest_note = (f"planner's largest batch for {memory_text}: {plan['largest_batch']}" if plan and plan.get("largest_batch")
                    else "planner: n/a" + (f" (largest batch fell back to {FALLBACK_LARGEST})" if a.want_planner_batch else ""))
    throughput_note = (f"FLOPs per image: {flops_per_image / 1e12:.4g} TFLOP (spec/performance.md: 2 x 12 d^2 per token "
                       f"and block + 4 L^2 d attention per block, x {3.3 if a.checkpointing == 'on' else 2.3} for the "
                       f"LoRA step{' with checkpointing' if a.checkpointing == 'on' else ''}). MFU against "
                       + (f"{peak:g} TFLOP/s ({facts['name']})" if peak else "no known peak (n/a)")
                       + f". Planner error = measured / predicted - 1 (fluxtrain's side); {largest_note}.")
    print()
    print(throughput_table)
    print(throughput_note)

    if a.markdown:
        cmd = "python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
        first = next((res for runs in results.values() for res in runs if not res.get("oom")), {})
        text = (f"Command: `{cmd.strip()}`  \nDate: {datetime.date.today().isoformat()}, commit `{commit()}`  \n"
                f"Machine: {platform.machine()} {os.cpu_count()} CPUs ({first.get('threads', '?')} torch threads), "
                f"{facts['name']}, {a.device} {a.precision}  \n{shape}\n\n{table}\n\n{extra}\n\n"
                f"{throughput_table}\n\n{throughput_note}\n")
        write_atomic(a.markdown, text)
    if a.json:
        write_atomic(a.json, json.dumps({"settings": {k: v for k, v in vars(a).items() if isinstance(v, (str, int, float, bool, list, type(None)))},
                                         "device": facts, "planner": plan, "rows": raw_rows,
                                         "results": {f"{s}/{b}": v for (s, b), v in results.items()}}, indent=1))
    if failures:
        print("MISMATCH: the two sides do not compute the same step:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
