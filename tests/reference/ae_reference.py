"""The reference Flux autoencoder: diffusers' AutoencoderKL with Flux's configuration, holding BFL-layout
(ae.safetensors) weights.

diffusers names the same modules differently, so the BFL weights are mapped (`to_diffusers`): down.N.block
-> down_blocks.N.resnets, up.N -> up_blocks.(levels-1-N) (BFL indexes decoder levels by resolution, diffusers
by execution order), mid.attn_1.{q,k,v,proj_out} (1x1 convs) -> mid_block.attentions.0.to_{q,k,v,out.0}
(linears), nin_shortcut -> conv_shortcut, norm_out -> conv_norm_out. Flux has no quant convs.
"""
from __future__ import annotations

import re

from reference.tiny_models import TINY_AE, AEConfig


def to_diffusers(weights: dict, levels: int) -> dict:
    """BFL ae.safetensors keys -> diffusers AutoencoderKL keys."""
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    out = {}
    for name, t in weights.items():
        n = name.replace("nin_shortcut", "conv_shortcut").replace("norm_out", "conv_norm_out")
        n = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", n)
        n = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", n)
        n = re.sub(r"^decoder\.up\.(\d+)\.block\.",
                   lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.resnets.", n)
        n = re.sub(r"^decoder\.up\.(\d+)\.upsample\.",
                   lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0.", n)
        n = n.replace(".mid.block_1.", ".mid_block.resnets.0.").replace(".mid.block_2.", ".mid_block.resnets.1.")
        m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", name)
        if m:
            n = f"{m.group(1)}.mid_block.attentions.0.{attn[m.group(2)]}.{m.group(3)}"
            if m.group(2) != "norm" and m.group(3) == "weight":
                t = t[:, :, 0, 0]  # 1x1 conv -> linear
        out[n] = t
    return out


def reference_model(weights: dict, c: AEConfig = TINY_AE):
    """diffusers' AutoencoderKL with Flux's configuration holding BFL-layout AE weights."""
    from diffusers import AutoencoderKL

    levels = len(c.ch_mult)
    vae = AutoencoderKL(in_channels=c.in_channels, out_channels=c.out_ch,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels,
                        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
                        act_fn="silu", latent_channels=c.z_channels, norm_num_groups=32,
                        scaling_factor=c.scale_factor, shift_factor=c.shift_factor, use_quant_conv=False,
                        use_post_quant_conv=False, mid_block_add_attention=True).eval()
    vae.load_state_dict(to_diffusers(weights, levels), strict=True)
    return vae
