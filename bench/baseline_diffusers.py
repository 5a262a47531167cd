"""The eager PyTorch baseline of bench/train_step.py: the LoRA training step of fluxtrain_bench, in Python.

diffusers' FluxTransformer2DModel holds the weights of the same BFL-layout file (tests/reference's
converter); PEFT LoRA adapters sit on the same Linear layers with the same rank and alpha, starting from
the same weights (the kohya-format file fluxtrain_bench --write-lora wrote); diffusers' own gradient
checkpointing (torch.utils.checkpoint per block) with fluxtrain's policy by default: every block but the
last, whose recomputation would run right before its own backward (--checkpoint-last 1: every block, as
diffusers' enable_gradient_checkpointing() alone does); torch.optim.AdamW (weight decay 0.01) and
clip_grad_norm_(1.0), as fluxtrain's train_step. Timesteps and noise come from CPU generators seeded as
fluxtrain's, in the same order, so both sides train on the same numbers and their losses agree.

One batch size per process, or several one after the other (--batches; each starts from the same LoRA,
optimizer state and generators); prints one JSON object per batch with the same fields as fluxtrain_bench.
On CUDA a batch that runs out of memory prints {"oom": true, ...} and the larger ones are not tried. The
model is built on the meta device and takes the file's tensors by assignment (no host copy of a 12B model
in fp32). Memory is defined as there:
  CPU   peak_bytes = VmHWM over the warm-up + timed steps (reset through /proc/self/clear_refs after
        set-up) - VmRSS once the libraries are imported (torch, diffusers, PEFT), before the model.
  CUDA  peak_bytes = torch.cuda.max_memory_allocated() over the same steps (reset after set-up).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import types

import torch
import torch.utils.checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from reference import flux_reference as fr  # noqa: E402
from reference.tiny_models import FluxConfig  # noqa: E402


def proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def detect_config(sd: dict) -> FluxConfig:
    """The config of a BFL-layout state dict, from shapes (as fluxtrain's FluxConfig::detect)."""
    hidden, in_channels = sd["img_in.weight"].shape
    depth = len({k.split(".")[1] for k in sd if k.startswith("double_blocks.")})
    single = len({k.split(".")[1] for k in sd if k.startswith("single_blocks.")})
    head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0] if depth else \
        sd["single_blocks.0.norm.query_norm.scale"].shape[0]
    mlp = sd["double_blocks.0.img_mlp.0.weight"].shape[0] if depth else \
        sd["single_blocks.0.linear1.weight"].shape[0] - 3 * hidden
    if head_dim != 128:  # the RoPE axes are in no tensor; fluxtrain knows Flux.1's, for head width 128
        raise SystemExit(f"head width {head_dim}: the benchmark's single-file model needs Flux.1's head width 128 "
                         "(RoPE axes 16/56/56)")
    return FluxConfig(in_channels=in_channels, out_channels=sd["final_layer.linear.weight"].shape[0],
                      vec_in_dim=sd["vector_in.in_layer.weight"].shape[1],
                      context_in_dim=sd["txt_in.weight"].shape[1], hidden_size=hidden, mlp_ratio=mlp / hidden,
                      num_heads=hidden // head_dim, depth=depth, depth_single_blocks=single,
                      axes_dim=(16, 56, 56),
                      guidance_embed="guidance_in.in_layer.weight" in sd)


def lora_targets(cfg: FluxConfig) -> dict:
    """kohya module name (fluxtrain's split_qkv layout) -> the diffusers Linear modules of its parts, in order."""
    out = {}
    for i in range(cfg.depth):
        k, d = f"lora_unet_double_blocks_{i}_", f"transformer_blocks.{i}."
        out[k + "img_mod_lin"] = [d + "norm1.linear"]
        out[k + "txt_mod_lin"] = [d + "norm1_context.linear"]
        out[k + "img_attn_qkv"] = [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]
        out[k + "txt_attn_qkv"] = [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]
        out[k + "img_attn_proj"] = [d + "attn.to_out.0"]
        out[k + "txt_attn_proj"] = [d + "attn.to_add_out"]
        out[k + "img_mlp_0"] = [d + "ff.net.0.proj"]
        out[k + "img_mlp_2"] = [d + "ff.net.2"]
        out[k + "txt_mlp_0"] = [d + "ff_context.net.0.proj"]
        out[k + "txt_mlp_2"] = [d + "ff_context.net.2"]
    for i in range(cfg.depth_single_blocks):
        k, d = f"lora_unet_single_blocks_{i}_", f"single_transformer_blocks.{i}."
        out[k + "linear1"] = [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"]
        out[k + "linear2"] = [d + "proj_out"]
        out[k + "modulation_lin"] = [d + "norm.linear"]
    return out


def load_kohya_into_peft(model, lora: dict, targets: dict, rank: int, alpha: float) -> None:
    """Copies a kohya-format LoRA (split parts fused: down stacked [k*r, in], up block-diagonal, alpha * k)
    into the PEFT adapters of `model`."""
    modules = dict(model.named_modules())
    names = {k.rsplit(".", 2)[0] for k in lora}
    if names != set(targets):
        raise SystemExit(f"baseline: the LoRA file's modules differ from the targets: only in the file "
                         f"{sorted(names - set(targets))[:5]}, only in the targets {sorted(set(targets) - names)[:5]}"
                         " (write it with fluxtrain_bench --write-lora --split-qkv 1)")
    for name, parts in targets.items():
        down, up = lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"]
        k = len(parts)
        if down.shape[0] != k * rank:
            raise SystemExit(f"baseline: {name}.lora_down.weight has {down.shape[0]} rows, expected {k} x rank {rank}")
        stored_alpha = float(lora[f"{name}.alpha"])
        if abs(stored_alpha / k - alpha) > 1e-6 * max(1.0, alpha):
            raise SystemExit(f"baseline: {name}.alpha is {stored_alpha} (= {stored_alpha / k} per part), expected {alpha}")
        row = 0
        for j, target in enumerate(parts):
            layer = modules[target]
            rows = layer.base_layer.out_features
            with torch.no_grad():
                layer.lora_A["default"].weight.copy_(down[j * rank:(j + 1) * rank])
                layer.lora_B["default"].weight.copy_(up[row:row + rows, j * rank:(j + 1) * rank])
            row += rows
        if row != up.shape[0]:
            raise SystemExit(f"baseline: {name}.lora_up.weight has {up.shape[0]} rows, the targets {row}")


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def img_ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(w, dtype=torch.float32)[None, :]
    return ids.reshape(h * w, 3)


def build_model(cfg: FluxConfig, path: str, device: torch.device, dtype: torch.dtype):
    """diffusers' FluxTransformer2DModel holding the BFL-layout file's weights, built on the meta device and
    filled by assignment straight from the file on `device` (no random initialisation, no fp32 copy of a
    12B model in host memory), then cast to `dtype`."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    heads = cfg.num_heads
    with torch.device("meta"):
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
            num_single_layers=cfg.depth_single_blocks, attention_head_dim=cfg.hidden_size // heads,
            num_attention_heads=heads, joint_attention_dim=cfg.context_in_dim, pooled_projection_dim=cfg.vec_in_dim,
            guidance_embeds=cfg.guidance_embed, axes_dims_rope=tuple(cfg.axes_dim))
    sd = load_file(path, device=str(device))
    model.load_state_dict(fr.bfl_to_diffusers(sd, cfg), strict=True, assign=True)
    del sd
    return model.to(device=device, dtype=dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--lora", required=True, help="initial LoRA (kohya format, split q/k/v) from fluxtrain_bench --write-lora")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--batches", default="",
                   help="comma-separated batch sizes measured one after the other in this process (each from the "
                        "same initial LoRA, optimizer state and generators; one JSON line each); overrides --batch")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--checkpointing", type=int, default=1)
    p.add_argument("--checkpoint-last", type=int, default=0,
                   help="1: checkpoint the last block too (diffusers' default); 0: not, as fluxtrain")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    try:
        batches = [int(b) for b in a.batches.split(",") if b.strip()] if a.batches else [a.batch]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise SystemExit(f"baseline: --batches '{a.batches}': expected positive batch sizes, e.g. 1,2,4")

    from diffusers.utils import logging as diffusers_logging
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import load_file

    diffusers_logging.set_verbosity_error()

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    runtime_rss = proc_status_bytes("VmRSS")
    device = torch.device(a.device)
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32

    with safe_open(a.model, "pt") as f:
        cfg = detect_config({k: types.SimpleNamespace(shape=tuple(f.get_slice(k).get_shape())) for k in f.keys()})
    model = build_model(cfg, a.model, device, dtype)
    model.requires_grad_(False)
    targets = lora_targets(cfg)
    model.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.alpha, init_lora_weights=True,
                                 target_modules=[m for parts in targets.values() for m in parts]))
    initial_lora = load_file(a.lora)
    # Frozen base in the compute dtype, LoRA masters in fp32 (diffusers' cast_training_params), as fluxtrain.
    model.to(device=device, dtype=dtype)
    params = [q for q in model.parameters() if q.requires_grad]
    for q in params:
        q.data = q.data.float()
    calls = {"checkpointed": 0, "plain": 0}
    if a.checkpointing:
        blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        last = blocks[-1] if blocks and not a.checkpoint_last else None

        def checkpointed(block, *args):
            # diffusers calls this for every block when checkpointing is on; the last runs plainly (as in
            # fluxtrain) unless --checkpoint-last 1.
            if block is last:
                calls["plain"] += 1
                return block(*args)
            calls["checkpointed"] += 1
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

        model.enable_gradient_checkpointing(checkpointed)
    model.train()

    inputs = load_file(a.inputs)
    for name in ("latents", "t5", "clip_pooled"):
        if inputs[name].shape[0] < max(batches):
            raise SystemExit(f"baseline: {a.inputs}: tensor '{name}' holds {inputs[name].shape[0]} samples but the "
                             f"batch is {max(batches)}; write the inputs for the largest batch (bench/train_step.py does)")
    out_of_memory = False
    for batch in batches:
        if out_of_memory:  # a larger batch than one that did not fit
            print(json.dumps({"side": "eager", "batch": batch, "oom": True, "error": "a smaller batch ran out of memory"}),
                  flush=True)
            continue
        try:
            result = run_batch(a, model, params, calls, cfg, inputs, initial_lora, targets, batch, device, dtype)
        except torch.cuda.OutOfMemoryError as e:
            out_of_memory = True
            result = {"side": "eager", "batch": batch, "oom": True, "error": str(e).splitlines()[0][:300]}
            for q in params:
                q.grad = None
            gc.collect()
            torch.cuda.empty_cache()
        result.update(runtime_rss=runtime_rss)
        if not result.get("oom") and device.type == "cpu":
            result["peak_bytes"] = result["peak_rss"] - runtime_rss
        print(json.dumps(result), flush=True)


def run_batch(a, model, params, calls, cfg, inputs, initial_lora, targets, batch, device, dtype) -> dict:
    """`a.warmup` + `a.steps` steps of `batch` samples from the initial LoRA, a new optimizer and the seeded
    generators: what a process of its own for this batch would measure."""
    load_kohya_into_peft(model, initial_lora, targets, a.rank, a.alpha)
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    calls["checkpointed"] = calls["plain"] = 0
    latents = inputs["latents"][:batch].float().clone()
    t5 = inputs["t5"][:batch].float().clone()
    clip_pooled = inputs["clip_pooled"][:batch].float().clone()
    g_time = torch.Generator().manual_seed(a.seed + 100)
    g_noise = torch.Generator().manual_seed(a.seed + 101)
    b, _, h, w = latents.shape
    ids = img_ids(h // 2, w // 2).to(device)
    txt_ids = torch.zeros(t5.shape[1], 3, device=device)
    guidance = torch.full((b,), 1.0, device=device) if cfg.guidance_embed else None

    def step() -> tuple:
        # As fluxtrain's batch_loss: sigmoid timesteps, then noise, from their own CPU generators.
        sigmas = torch.sigmoid(torch.randn(b, generator=g_time) * 1.0)
        noise = torch.randn(latents.shape, generator=g_noise)
        s = sigmas.view(b, 1, 1, 1)
        noisy, target = (1 - s) * latents + s * noise, noise - latents
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            pred = model(hidden_states=pack(noisy).to(device, dtype), encoder_hidden_states=t5.to(device, dtype),
                         pooled_projections=clip_pooled.to(device, dtype), timestep=sigmas.to(device),
                         img_ids=ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        loss = (pred.float() - pack(target).to(device)).pow(2).flatten(1).mean(1).mean()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item(), grad_norm.item()

    gc.collect()
    setup_rss = proc_status_bytes("VmRSS")
    hwm_reset = False
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        hwm_reset = reset_peak_rss()

    step_ms, step_cpu_ms, losses, grad_norms = [], [], [], []
    for i in range(a.warmup + a.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss, grad_norm = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1000
        if i >= a.warmup:
            step_ms.append(ms)
            step_cpu_ms.append((time.process_time() - cpu_start) * 1000)
        losses.append(loss)
        grad_norms.append(grad_norm)

    out = {"side": "eager", "batch": batch, "device": str(device), "precision": a.precision,
           "checkpointing": bool(a.checkpointing), "checkpoint_last": bool(a.checkpoint_last),
           "checkpointed_blocks_per_step": calls["checkpointed"] / (a.warmup + a.steps),
           "thp": os.environ.get("THP_MEM_ALLOC_ENABLE", ""), "threads": torch.get_num_threads(),
           "lora_parameters": sum(q.numel() for q in params), "step_ms": step_ms,
           "median_ms": statistics.median(step_ms), "step_cpu_ms": step_cpu_ms,
           "median_cpu_ms": statistics.median(step_cpu_ms), "losses": losses, "grad_norms": grad_norms,
           "setup_rss": setup_rss}
    del optimizer
    if device.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        out.update(peak_rss=proc_status_bytes("VmHWM"), hwm_reset=hwm_reset)
    return out


if __name__ == "__main__":
    main()
