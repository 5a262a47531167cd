"""`fluxtrain make-tiny` writes the four files in the real layouts (keys, shapes, dtypes, the T5 duplicate
embedding), deterministic per seed, and each loads into the reference implementation."""
from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file

from conftest import run
from reference import tiny_models as tm

EXPECTED = {
    "flux1-dev.safetensors": (tm.flux_shapes(tm.TINY_FLUX), torch.bfloat16),
    "ae.safetensors": (tm.ae_shapes(tm.TINY_AE), torch.float32),
    "clip_l.safetensors": (tm.clip_shapes(tm.TINY_CLIP), torch.float16),
    "t5xxl_fp16.safetensors": (tm.t5_shapes(tm.TINY_T5, duplicate_embedding=True), torch.float16),
}


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_layouts_dtypes_and_determinism(tmp_path, fluxtrain_bin):
    run([fluxtrain_bin, "make-tiny", "--out", tmp_path / "a", "--seed", "5"])
    run([fluxtrain_bin, "make-tiny", "--out", tmp_path / "b", "--seed", "5"])
    run([fluxtrain_bin, "make-tiny", "--out", tmp_path / "c", "--seed", "6", "--schnell"])
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    for name, (shapes, dtype) in EXPECTED.items():
        sd = load_file(str(tmp_path / "a" / name))
        assert {k: tuple(v.shape) for k, v in sd.items()} == dict(shapes), name
        assert {v.dtype for v in sd.values()} == {dtype}, name
    t5 = load_file(str(tmp_path / "a" / "t5xxl_fp16.safetensors"))
    assert torch.equal(t5["shared.weight"], t5["encoder.embed_tokens.weight"])
    schnell = load_file(str(tmp_path / "c" / "flux1-schnell.safetensors"))
    assert set(schnell) == set(tm.flux_shapes(tm.replace(tm.TINY_FLUX, guidance_embed=False)))
    info = json.loads(run([fluxtrain_bin, "inspect", "--json", tmp_path / "c" / "flux1-schnell.safetensors"]).stdout)
    assert info["components"][0]["details"]["variant"] == "schnell"


def test_the_references_load_them(tmp_path, fluxtrain_bin):
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from reference import flux_reference as fr

    run([fluxtrain_bin, "make-tiny", "--out", tmp_path, "--seed", "1"])
    flux = {k: v.float() for k, v in load_file(str(tmp_path / "flux1-dev.safetensors")).items()}
    fr.diffusers_model(tm.TINY_FLUX, flux)  # strict load_state_dict
    c = tm.TINY_CLIP
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=c.hidden_size, num_attention_heads=c.num_attention_heads,
                                        num_hidden_layers=c.num_hidden_layers, intermediate_size=c.intermediate_size,
                                        hidden_act="quick_gelu"))
    sd = {k.removeprefix("text_model."): v for k, v in load_file(str(tmp_path / "clip_l.safetensors")).items()}
    missing, unexpected = clip.load_state_dict(sd, strict=False)  # transformers 5: no text_model. prefix
    assert not unexpected and set(missing) <= {"embeddings.position_ids"}, (missing, unexpected)
    t5 = T5EncoderModel(T5Config(d_model=48, d_kv=8, num_heads=4, d_ff=80, num_layers=2,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    missing, unexpected = t5.load_state_dict(load_file(str(tmp_path / "t5xxl_fp16.safetensors")), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
