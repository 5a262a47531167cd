"""The Flux autoencoder (src/models/ae) against diffusers' AutoencoderKL with Flux's configuration, on tiny
random weights in the real ae.safetensors (BFL) layout (spec/flux.md §2, §7).

diffusers names the same modules differently, so the BFL weights are mapped (`reference/ae_reference.py`): down.N.block
-> down_blocks.N.resnets, up.N -> up_blocks.(levels-1-N) (BFL indexes decoder levels by resolution, diffusers
by execution order), mid.attn_1.{q,k,v,proj_out} (1x1 convs) -> mid_block.attentions.0.to_{q,k,v,out.0}
(linears), nin_shortcut -> conv_shortcut, norm_out -> conv_norm_out. Flux has no quant convs. Latents are
scaled as BFL does: encode = 0.3611 * (mean - 0.1159), decode = decoder(z / 0.3611 + 0.1159).

Relative error everywhere: rel(a, b) = max|a - b| / max|b|, with b the reference. Tolerances: fp32 1e-5,
bf16 vs the fp32 reference 3e-2. Images are 80x48 (non-square), batch 2, drawn fresh each run.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run
from reference.ae_reference import reference_model, to_diffusers
from reference.tiny_models import AE_FULL, TINY_AE, ae_shapes, random_state_dict

SEED = int(torch.randint(0, 2**31 - 1, ()).item())
print(f"test_ae seed {SEED}")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def reference_encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean
    return TINY_AE.scale_factor * (mean - TINY_AE.shift_factor)


def reference_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(latents / TINY_AE.scale_factor + TINY_AE.shift_factor).sample


def cpp(test_tool, tmp_path, command, model, name, value, *flags):
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file({name: value}, str(src))
    report = json.loads(run([test_tool, command, model, src, out, *flags]).stdout)
    return next(iter(load_file(str(out)).values())), report


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # bf16-exact values (stored F32 like the real file), so that the bf16 runs measure the compute.
    weights = {k: v.bfloat16().float() for k, v in random_state_dict(ae_shapes(TINY_AE), torch.float32, SEED).items()}
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    save_file(weights, str(path))
    return path, weights, reference_model(weights)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(SEED + 1)
    pixels = torch.rand(2, 3, 48, 80, generator=g) * 2 - 1  # H 48, W 80: a 3x5 token grid
    latents = torch.randn(2, 16, 6, 10, generator=g)
    return pixels, latents


def test_diffusers_map_covers_every_key(model):
    _, weights, vae = model
    assert set(to_diffusers(weights, len(TINY_AE.ch_mult))) == set(vae.state_dict())
    assert any("nin_shortcut" in k for k in weights if k.startswith("encoder"))
    assert any("nin_shortcut" in k for k in weights if k.startswith("decoder"))


def test_encode_fp32(test_tool, tmp_path, model, inputs):
    path, _, vae = model
    out, report = cpp(test_tool, tmp_path, "ae-encode", path, "pixels", inputs[0])
    assert report["unused"] == 0 and report["loaded"] == 176
    want = reference_encode(vae, inputs[0])
    assert out.shape == (2, 16, 6, 10)
    err = rel(out, want)
    print(f"ae encode fp32 rel {err:.3g}")
    assert err <= 1e-5


def test_decode_fp32(test_tool, tmp_path, model, inputs):
    path, _, vae = model
    out, _ = cpp(test_tool, tmp_path, "ae-decode", path, "latents", inputs[1])
    want = reference_decode(vae, inputs[1])
    assert out.shape == (2, 3, 48, 80)
    err = rel(out, want)
    print(f"ae decode fp32 rel {err:.3g}")
    assert err <= 1e-5


def test_bf16_close_to_fp32_reference(test_tool, tmp_path, model, inputs):
    path, _, vae = model
    enc, report = cpp(test_tool, tmp_path, "ae-encode", path, "pixels", inputs[0], "--dtype", "bf16")
    assert report["dtypes"] == ["BFloat16"]
    dec, _ = cpp(test_tool, tmp_path, "ae-decode", path, "latents", inputs[1], "--dtype", "bf16")
    err_e, err_d = rel(enc, reference_encode(vae, inputs[0])), rel(dec, reference_decode(vae, inputs[1]))
    print(f"ae bf16 rel encode {err_e:.3g} decode {err_d:.3g}")
    assert err_e <= 3e-2 and err_d <= 3e-2


@pytest.mark.parametrize("prefix", ["vae.", "first_stage_model."])
def test_merged_checkpoint_prefix(test_tool, tmp_path, model, inputs, prefix):
    path, weights, _ = model
    merged = {prefix + k: v for k, v in weights.items()}
    merged["model.diffusion_model.img_in.weight"] = torch.zeros(4, 4)
    save_file(merged, str(tmp_path / "merged.safetensors"))
    single, _ = cpp(test_tool, tmp_path, "ae-encode", path, "pixels", inputs[0])
    out, report = cpp(test_tool, tmp_path, "ae-encode", tmp_path / "merged.safetensors", "pixels", inputs[0])
    assert report["prefix"] == prefix and report["unused"] == 0
    assert torch.equal(out, single)


def test_shape_mismatch_is_named(test_tool, tmp_path, model, inputs):
    _, weights, _ = model
    bad = dict(weights)
    bad["decoder.up.1.block.0.conv2.weight"] = torch.zeros(64, 64, 3, 1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    save_file({"latents": inputs[1]}, str(tmp_path / "in.safetensors"))
    r = run([test_tool, "ae-decode", tmp_path / "bad.safetensors", tmp_path / "in.safetensors", tmp_path / "o"],
            check=False)
    assert r.returncode == 1
    assert "decoder.up.1.block.0.conv2.weight: got [64, 64, 3, 1]" in r.stderr and "expected [64, 64, 3, 3]" in r.stderr


def test_full_size_keys_on_meta_device(test_tool):
    got = json.loads(run([test_tool, "encoders-keys", "ae"]).stdout)
    real = {k: list(v) for k, v in ae_shapes(AE_FULL).items()}
    assert len(real) == 244
    assert got == real
