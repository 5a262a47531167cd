"""Key/shape layouts of the four Flux.1 single-file checkpoints, for any configuration, and a writer of
random-weight model sets in those layouts.

The layouts follow ../shared/spec/flux.md (BFL flux1-dev/schnell, ae, HF CLIP-L and T5 encoder); the
full-size configurations reproduce the real files' tensor and parameter counts (tested), the tiny ones
are spec section 7.

    python -m reference.tiny_models --out DIR [--schnell] [--seed N]
"""
from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class FluxConfig:
    in_channels: int = 64
    out_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple = (16, 56, 56)
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = True


@dataclass(frozen=True)
class AEConfig:
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159


@dataclass(frozen=True)
class ClipConfig:
    hidden_size: int = 768
    num_attention_heads: int = 12
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 77
    vocab_size: int = 49408


@dataclass(frozen=True)
class T5Config:
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    vocab_size: int = 32128


FLUX_DEV = FluxConfig()
FLUX_SCHNELL = replace(FLUX_DEV, guidance_embed=False)
AE_FULL = AEConfig()
CLIP_L = ClipConfig()
T5_XXL = T5Config()

# The tiny models keep the real proportions where the weights do not state them: Flux.1's head width 128
# with its RoPE axes (16, 56, 56), CLIP's head width 64 (models/tiny.cpp writes the same).
TINY_FLUX = FluxConfig(vec_in_dim=128, context_in_dim=48, hidden_size=128, num_heads=1, depth=2,
                       depth_single_blocks=3)
# Two heads, for the parity tests that must see the heads split and merged in the right order.
TINY_FLUX_2_HEADS = replace(TINY_FLUX, hidden_size=256, num_heads=2)
TINY_AE = AEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
TINY_CLIP = ClipConfig(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, intermediate_size=512)
TINY_T5 = T5Config(d_model=48, d_kv=8, num_heads=4, d_ff=80, num_layers=2)


def _linear(out: OrderedDict, name: str, n_out: int, n_in: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = (n_out, n_in)
    if bias:
        out[f"{name}.bias"] = (n_out,)


def flux_shapes(cfg: FluxConfig) -> "OrderedDict[str, tuple]":
    h = cfg.hidden_size
    m = int(h * cfg.mlp_ratio)
    d = h // cfg.num_heads
    s: OrderedDict = OrderedDict()
    _linear(s, "img_in", h, cfg.in_channels)
    _linear(s, "time_in.in_layer", h, 256)
    _linear(s, "time_in.out_layer", h, h)
    _linear(s, "vector_in.in_layer", h, cfg.vec_in_dim)
    _linear(s, "vector_in.out_layer", h, h)
    if cfg.guidance_embed:
        _linear(s, "guidance_in.in_layer", h, 256)
        _linear(s, "guidance_in.out_layer", h, h)
    _linear(s, "txt_in", h, cfg.context_in_dim)
    for i in range(cfg.depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            _linear(s, f"{p}_mod.lin", 6 * h, h)
            _linear(s, f"{p}_attn.qkv", 3 * h, h, cfg.qkv_bias)
            s[f"{p}_attn.norm.query_norm.scale"] = (d,)
            s[f"{p}_attn.norm.key_norm.scale"] = (d,)
            _linear(s, f"{p}_attn.proj", h, h)
            _linear(s, f"{p}_mlp.0", m, h)
            _linear(s, f"{p}_mlp.2", h, m)
    for i in range(cfg.depth_single_blocks):
        p = f"single_blocks.{i}"
        _linear(s, f"{p}.linear1", 3 * h + m, h)
        _linear(s, f"{p}.linear2", h, h + m)
        s[f"{p}.norm.query_norm.scale"] = (d,)
        s[f"{p}.norm.key_norm.scale"] = (d,)
        _linear(s, f"{p}.modulation.lin", 3 * h, h)
    _linear(s, "final_layer.linear", cfg.out_channels, h)
    _linear(s, "final_layer.adaLN_modulation.1", 2 * h, h)
    return s


def _resnet(s: OrderedDict, p: str, c_in: int, c_out: int) -> None:
    s[f"{p}.norm1.weight"] = (c_in,)
    s[f"{p}.norm1.bias"] = (c_in,)
    s[f"{p}.conv1.weight"] = (c_out, c_in, 3, 3)
    s[f"{p}.conv1.bias"] = (c_out,)
    s[f"{p}.norm2.weight"] = (c_out,)
    s[f"{p}.norm2.bias"] = (c_out,)
    s[f"{p}.conv2.weight"] = (c_out, c_out, 3, 3)
    s[f"{p}.conv2.bias"] = (c_out,)
    if c_in != c_out:
        s[f"{p}.nin_shortcut.weight"] = (c_out, c_in, 1, 1)
        s[f"{p}.nin_shortcut.bias"] = (c_out,)


def _mid(s: OrderedDict, p: str, c: int) -> None:
    _resnet(s, f"{p}.mid.block_1", c, c)
    s[f"{p}.mid.attn_1.norm.weight"] = (c,)
    s[f"{p}.mid.attn_1.norm.bias"] = (c,)
    for name in ("q", "k", "v", "proj_out"):
        s[f"{p}.mid.attn_1.{name}.weight"] = (c, c, 1, 1)
        s[f"{p}.mid.attn_1.{name}.bias"] = (c,)
    _resnet(s, f"{p}.mid.block_2", c, c)


def ae_shapes(cfg: AEConfig) -> "OrderedDict[str, tuple]":
    s: OrderedDict = OrderedDict()
    levels = len(cfg.ch_mult)
    s["encoder.conv_in.weight"] = (cfg.ch, cfg.in_channels, 3, 3)
    s["encoder.conv_in.bias"] = (cfg.ch,)
    in_mult = (1,) + tuple(cfg.ch_mult)
    block_in = cfg.ch
    for level in range(levels):
        block_in = cfg.ch * in_mult[level]
        block_out = cfg.ch * cfg.ch_mult[level]
        for b in range(cfg.num_res_blocks):
            _resnet(s, f"encoder.down.{level}.block.{b}", block_in, block_out)
            block_in = block_out
        if level != levels - 1:
            s[f"encoder.down.{level}.downsample.conv.weight"] = (block_in, block_in, 3, 3)
            s[f"encoder.down.{level}.downsample.conv.bias"] = (block_in,)
    _mid(s, "encoder", block_in)
    s["encoder.norm_out.weight"] = (block_in,)
    s["encoder.norm_out.bias"] = (block_in,)
    s["encoder.conv_out.weight"] = (2 * cfg.z_channels, block_in, 3, 3)
    s["encoder.conv_out.bias"] = (2 * cfg.z_channels,)

    block_in = cfg.ch * cfg.ch_mult[-1]
    s["decoder.conv_in.weight"] = (block_in, cfg.z_channels, 3, 3)
    s["decoder.conv_in.bias"] = (block_in,)
    _mid(s, "decoder", block_in)
    for level in reversed(range(levels)):
        block_out = cfg.ch * cfg.ch_mult[level]
        for b in range(cfg.num_res_blocks + 1):
            _resnet(s, f"decoder.up.{level}.block.{b}", block_in, block_out)
            block_in = block_out
        if level != 0:
            s[f"decoder.up.{level}.upsample.conv.weight"] = (block_in, block_in, 3, 3)
            s[f"decoder.up.{level}.upsample.conv.bias"] = (block_in,)
    s["decoder.norm_out.weight"] = (block_in,)
    s["decoder.norm_out.bias"] = (block_in,)
    s["decoder.conv_out.weight"] = (cfg.out_ch, block_in, 3, 3)
    s["decoder.conv_out.bias"] = (cfg.out_ch,)
    return s


def clip_shapes(cfg: ClipConfig) -> "OrderedDict[str, tuple]":
    h = cfg.hidden_size
    s: OrderedDict = OrderedDict()
    s["text_model.embeddings.token_embedding.weight"] = (cfg.vocab_size, h)
    s["text_model.embeddings.position_embedding.weight"] = (cfg.max_position_embeddings, h)
    for i in range(cfg.num_hidden_layers):
        p = f"text_model.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _linear(s, f"{p}.self_attn.{proj}", h, h)
        s[f"{p}.layer_norm1.weight"] = (h,)
        s[f"{p}.layer_norm1.bias"] = (h,)
        _linear(s, f"{p}.mlp.fc1", cfg.intermediate_size, h)
        _linear(s, f"{p}.mlp.fc2", h, cfg.intermediate_size)
        s[f"{p}.layer_norm2.weight"] = (h,)
        s[f"{p}.layer_norm2.bias"] = (h,)
    s["text_model.final_layer_norm.weight"] = (h,)
    s["text_model.final_layer_norm.bias"] = (h,)
    return s


def t5_shapes(cfg: T5Config, duplicate_embedding: bool = True) -> "OrderedDict[str, tuple]":
    d, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
    s: OrderedDict = OrderedDict()
    s["shared.weight"] = (cfg.vocab_size, d)
    if duplicate_embedding:
        s["encoder.embed_tokens.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.num_layers):
        p = f"encoder.block.{i}.layer"
        for name in ("q", "k", "v"):
            s[f"{p}.0.SelfAttention.{name}.weight"] = (inner, d)
        s[f"{p}.0.SelfAttention.o.weight"] = (d, inner)
        if i == 0:
            s[f"{p}.0.SelfAttention.relative_attention_bias.weight"] = (cfg.relative_attention_num_buckets, cfg.num_heads)
        s[f"{p}.0.layer_norm.weight"] = (d,)
        s[f"{p}.1.DenseReluDense.wi_0.weight"] = (cfg.d_ff, d)
        s[f"{p}.1.DenseReluDense.wi_1.weight"] = (cfg.d_ff, d)
        s[f"{p}.1.DenseReluDense.wo.weight"] = (d, cfg.d_ff)
        s[f"{p}.1.layer_norm.weight"] = (d,)
    s["encoder.final_layer_norm.weight"] = (d,)
    return s


def transformers_t5(path, t: T5Config = TINY_T5):
    """transformers' T5EncoderModel (fp32, eval) holding the weights of a T5 file of config `t` (the reference
    encoder of the sample and text-encoder LoRA tests)."""
    from safetensors.torch import load_file
    from transformers import T5Config as HfT5Config
    from transformers import T5EncoderModel

    config = HfT5Config(vocab_size=t.vocab_size, d_model=t.d_model, d_kv=t.d_kv, d_ff=t.d_ff, num_layers=t.num_layers,
                        num_heads=t.num_heads, relative_attention_num_buckets=t.relative_attention_num_buckets,
                        relative_attention_max_distance=t.relative_attention_max_distance,
                        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                        is_encoder_decoder=False, use_cache=False)
    model = T5EncoderModel(config).eval()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model


def random_state_dict(shapes, dtype, seed: int):
    """Random weights: N(0, 1/fan_in) for matrices, around 1 for norm scales, small for biases."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            t = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif name.endswith(("scale", "norm.weight", "norm1.weight", "norm2.weight", "norm_out.weight",
                            "layer_norm.weight", "layer_norm1.weight", "layer_norm2.weight",
                            "final_layer_norm.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.05 * torch.randn(shape, generator=g)
        out[name] = t.to(dtype).contiguous()
    # T5's duplicate embedding is the same tensor as shared.weight in the real file.
    if "encoder.embed_tokens.weight" in out and "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"].clone()
    return out


def write_tiny_set(out_dir: str, schnell: bool = False, seed: int = 0) -> dict:
    """Writes flux1-{dev,schnell}.safetensors, ae.safetensors, clip_l.safetensors, t5xxl_fp16.safetensors."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    flux_cfg = replace(TINY_FLUX, guidance_embed=not schnell)
    files = {
        "flux1-schnell.safetensors" if schnell else "flux1-dev.safetensors":
            (flux_shapes(flux_cfg), torch.bfloat16),
        "ae.safetensors": (ae_shapes(TINY_AE), torch.float32),
        "clip_l.safetensors": (clip_shapes(TINY_CLIP), torch.float16),
        "t5xxl_fp16.safetensors": (t5_shapes(TINY_T5), torch.float16),
    }
    paths = {}
    for i, (name, (shapes, dtype)) in enumerate(files.items()):
        path = os.path.join(out_dir, name)
        save_file(random_state_dict(shapes, dtype, seed * 1000 + i), path, metadata={"format": "pt"})
        paths[name] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--schnell", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in write_tiny_set(args.out, args.schnell, args.seed).items():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
