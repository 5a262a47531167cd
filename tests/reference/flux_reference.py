"""The reference Flux transformer for the parity tests: diffusers' FluxTransformer2DModel holding the
same weights as a BFL-layout state dict.

diffusers' own single-file conversion hard-codes inner_dim 3072 and mlp_ratio 4, so it cannot convert a
tiny model: `bfl_to_diffusers` is the test's own map for any config, and test_flux.py checks it against
diffusers' conversion on a full-width model.
"""
from __future__ import annotations

import torch

from reference.tiny_models import FluxConfig


def bfl_to_diffusers(sd: dict, cfg: FluxConfig) -> dict:
    h = cfg.hidden_size
    out = {}

    def lin(dst, src, bias=True):
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        if bias:
            out[f"{dst}.bias"] = sd[f"{src}.bias"]

    lin("x_embedder", "img_in")
    lin("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    lin("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    lin("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    lin("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    if cfg.guidance_embed:
        lin("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
        lin("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    lin("context_embedder", "txt_in")
    for i in range(cfg.depth):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        lin(d + "norm1.linear", b + "img_mod.lin")
        lin(d + "norm1_context.linear", b + "txt_mod.lin")
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            w = sd[f"{b}{stream}_attn.qkv.weight"].chunk(3, 0)
            bias = sd[f"{b}{stream}_attn.qkv.bias"].chunk(3, 0)
            for name, wi, bi in zip(names, w, bias):
                out[f"{d}attn.{name}.weight"] = wi
                out[f"{d}attn.{name}.bias"] = bi
        out[d + "attn.norm_q.weight"] = sd[b + "img_attn.norm.query_norm.scale"]
        out[d + "attn.norm_k.weight"] = sd[b + "img_attn.norm.key_norm.scale"]
        out[d + "attn.norm_added_q.weight"] = sd[b + "txt_attn.norm.query_norm.scale"]
        out[d + "attn.norm_added_k.weight"] = sd[b + "txt_attn.norm.key_norm.scale"]
        lin(d + "attn.to_out.0", b + "img_attn.proj")
        lin(d + "attn.to_add_out", b + "txt_attn.proj")
        lin(d + "ff.net.0.proj", b + "img_mlp.0")
        lin(d + "ff.net.2", b + "img_mlp.2")
        lin(d + "ff_context.net.0.proj", b + "txt_mlp.0")
        lin(d + "ff_context.net.2", b + "txt_mlp.2")
    m = int(h * cfg.mlp_ratio)
    for i in range(cfg.depth_single_blocks):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        parts_w = sd[b + "linear1.weight"].split([h, h, h, m], 0)
        parts_b = sd[b + "linear1.bias"].split([h, h, h, m], 0)
        for name, wi, bi in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts_w, parts_b):
            out[f"{d}{name}.weight"] = wi
            out[f"{d}{name}.bias"] = bi
        out[d + "attn.norm_q.weight"] = sd[b + "norm.query_norm.scale"]
        out[d + "attn.norm_k.weight"] = sd[b + "norm.key_norm.scale"]
        lin(d + "proj_out", b + "linear2")
        lin(d + "norm.linear", b + "modulation.lin")
    lin("proj_out", "final_layer.linear")
    shift, scale = sd["final_layer.adaLN_modulation.1.weight"].chunk(2, 0)
    out["norm_out.linear.weight"] = torch.cat([scale, shift], 0)
    shift, scale = sd["final_layer.adaLN_modulation.1.bias"].chunk(2, 0)
    out["norm_out.linear.bias"] = torch.cat([scale, shift], 0)
    return {k: v.contiguous() for k, v in out.items()}


def diffusers_model(cfg: FluxConfig, sd: dict, dtype=torch.float32):
    from diffusers import FluxTransformer2DModel

    heads = cfg.num_heads
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
        num_single_layers=cfg.depth_single_blocks, attention_head_dim=cfg.hidden_size // heads,
        num_attention_heads=heads, joint_attention_dim=cfg.context_in_dim, pooled_projection_dim=cfg.vec_in_dim,
        guidance_embeds=cfg.guidance_embed, axes_dims_rope=tuple(cfg.axes_dim))
    missing, unexpected = model.load_state_dict(bfl_to_diffusers(sd, cfg), strict=True), None
    return model.to(dtype).eval()


def diffusers_forward(model, inputs: dict, **kwargs):
    return model(hidden_states=inputs["img"], encoder_hidden_states=inputs["txt"], pooled_projections=inputs["y"],
                 timestep=inputs["timesteps"], img_ids=inputs["img_ids"][0], txt_ids=inputs["txt_ids"][0],
                 guidance=inputs.get("guidance"), return_dict=False, **kwargs)[0]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest absolute difference relative to the reference's largest magnitude."""
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


def lora_test_model(tmp, cfg: FluxConfig, seed: int):
    """What the LoRA parity tests start from: a random Flux of `cfg` in BFL keys written to tmp/flux.safetensors,
    one small input batch (2x2 image tokens, 3 text tokens) written to tmp/inputs.safetensors, and diffusers'
    output on it. Returns (state dict, its path, inputs, their path, base output)."""
    from safetensors.torch import save_file

    from reference import tiny_models as tm

    sd = tm.random_state_dict(tm.flux_shapes(cfg), torch.float32, seed)
    path = tmp / "flux.safetensors"
    save_file(sd, str(path))
    g = torch.Generator().manual_seed(seed + 1)
    h, w, lt = 2, 2, 3
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    inputs = {"img": torch.randn(1, h * w, 64, generator=g), "img_ids": ids.reshape(1, h * w, 3),
              "txt": torch.randn(1, lt, cfg.context_in_dim, generator=g), "txt_ids": torch.zeros(1, lt, 3),
              "timesteps": torch.tensor([0.7]), "y": torch.randn(1, cfg.vec_in_dim, generator=g),
              "guidance": torch.tensor([3.5])}
    inputs_path = tmp / "inputs.safetensors"
    save_file(inputs, str(inputs_path))
    with torch.no_grad():
        base = diffusers_forward(diffusers_model(cfg, sd), inputs)
    return sd, path, inputs, inputs_path, base
