"""The CLIP text encoder (src/models/clip) against transformers' CLIPTextModel on tiny random weights in
the real clip_l.safetensors layout (spec/flux.md §3, §7).

Relative error everywhere: rel(a, b) = max|a - b| / max|b|, with b the reference. Tolerances: fp32 1e-5,
bf16 / fp16 vs the fp32 reference 3e-2. Inputs are drawn fresh each run (the seed is printed). Token ids
look real: BOS 49406, words, EOS 49407, padded with 49407 to 77; the pooled output is taken at the first
EOS (argmax of the ids), batch 2 with different lengths.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run
from reference.tiny_models import CLIP_L, TINY_CLIP, clip_shapes, random_state_dict

BOS, EOS = 49406, 49407
SEED = int(torch.randint(0, 2**31 - 1, ()).item())
print(f"test_clip seed {SEED}")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def hf_config(c=TINY_CLIP):
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                            max_position_embeddings=c.max_position_embeddings, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS)
    config._attn_implementation = "eager"
    return config


def reference(weights: dict, ids: torch.Tensor, c=TINY_CLIP):
    from transformers import CLIPTextModel

    model = CLIPTextModel(hf_config(c)).eval()
    # transformers 5's CLIPTextModel holds the text transformer's modules itself (no `text_model.` level;
    # from_pretrained renames the file's keys on load), so the prefix is removed here.
    model.load_state_dict({k.removeprefix("text_model."): v.float() for k, v in weights.items()}, strict=True)
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.last_hidden_state, out.pooler_output


def draw_ids(g: torch.Generator) -> torch.Tensor:
    ids = torch.full((2, 77), EOS, dtype=torch.long)
    for row, words in enumerate((5, 40)):
        ids[row, 0] = BOS
        ids[row, 1:1 + words] = torch.randint(0, BOS, (words,), generator=g)
    return ids


def cpp(test_tool, tmp_path, model, ids, *flags):
    src, out = tmp_path / "ids.safetensors", tmp_path / "out.safetensors"
    save_file({"ids": ids}, str(src))
    report = json.loads(run([test_tool, "clip-forward", model, src, out, *flags]).stdout)
    t = load_file(str(out))
    return t["last_hidden_state"], t["pooled"], report


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Stored F16 like the real file, with bf16-exact values, so that the bf16 run measures the compute and
    # not the rounding of the weights; the reference gets the same values in fp32.
    weights = random_state_dict(clip_shapes(TINY_CLIP), torch.float32, SEED)
    weights = {k: v.bfloat16().half() for k, v in weights.items()}
    path = tmp_path_factory.mktemp("clip") / "clip_l.safetensors"
    save_file(weights, str(path))
    return path, weights


@pytest.fixture
def g():
    return torch.Generator().manual_seed(SEED + 1)


def test_fp32_matches_clip_text_model(test_tool, tmp_path, model, g):
    path, weights = model
    ids = draw_ids(g)
    hidden, pooled, report = cpp(test_tool, tmp_path, path, ids)
    assert report["unused"] == 0 and report["dtypes"] == ["Float"]
    want_hidden, want_pooled = reference(weights, ids)
    # Pooling at the first EOS: row 0 at 6, row 1 at 41.
    assert torch.equal(want_pooled, want_hidden[torch.arange(2), torch.tensor([6, 41])])
    err_h, err_p = rel(hidden, want_hidden), rel(pooled, want_pooled)
    print(f"clip fp32 rel hidden {err_h:.3g} pooled {err_p:.3g}")
    assert err_h <= 1e-5 and err_p <= 1e-5


def test_short_sequence(test_tool, tmp_path, model, g):
    """Fewer than 77 tokens (positions 0..L-1 only); the EOS is the last token."""
    path, weights = model
    ids = torch.tensor([[BOS, 320, 1125, 539, EOS], [BOS, 7, EOS, EOS, EOS]])
    hidden, pooled, _ = cpp(test_tool, tmp_path, path, ids)
    want_hidden, want_pooled = reference(weights, ids)
    assert rel(hidden, want_hidden) <= 1e-5 and rel(pooled, want_pooled) <= 1e-5


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_close_to_fp32_reference(test_tool, tmp_path, model, g, dtype):
    path, weights = model
    ids = draw_ids(g)
    hidden, pooled, report = cpp(test_tool, tmp_path, path, ids, "--dtype", dtype)
    assert report["dtypes"] == ["BFloat16" if dtype == "bf16" else "Half"]
    want_hidden, want_pooled = reference(weights, ids)
    err_h, err_p = rel(hidden, want_hidden), rel(pooled, want_pooled)
    print(f"clip {dtype} rel hidden {err_h:.3g} pooled {err_p:.3g}")
    assert err_h <= 3e-2 and err_p <= 3e-2


@pytest.mark.parametrize("prefix", ["text_encoders.clip_l.transformer.", "cond_stage_model.transformer."])
def test_merged_checkpoint_prefix_and_ignored_extras(test_tool, tmp_path, model, g, prefix):
    path, weights = model
    merged = {prefix + k: v for k, v in weights.items()}
    # The two tensors some CLIP-L files carry and nothing uses: ignored explicitly, not reported.
    merged[prefix + "text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    merged[prefix + "text_projection.weight"] = torch.zeros(32, 32, dtype=torch.float16)
    merged["text_encoders.t5xxl.transformer.shared.weight"] = torch.zeros(4, 4)
    save_file(merged, str(tmp_path / "merged.safetensors"))
    ids = draw_ids(g)
    single = cpp(test_tool, tmp_path, path, ids)
    out = cpp(test_tool, tmp_path, tmp_path / "merged.safetensors", ids)
    assert out[2]["prefix"] == prefix and out[2]["unused"] == 0
    assert torch.equal(out[0], single[0]) and torch.equal(out[1], single[1])


def test_shape_mismatch_is_named(test_tool, tmp_path, model):
    _, weights = model
    bad = dict(weights)
    h, m = TINY_CLIP.hidden_size, TINY_CLIP.intermediate_size
    bad["text_model.encoder.layers.1.mlp.fc2.weight"] = torch.zeros(h, m + 1, dtype=torch.float16)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    save_file({"ids": torch.tensor([[BOS, EOS]])}, str(tmp_path / "in.safetensors"))
    r = run([test_tool, "clip-forward", tmp_path / "bad.safetensors", tmp_path / "in.safetensors", tmp_path / "o"],
            check=False)
    assert r.returncode == 1
    assert f"text_model.encoder.layers.1.mlp.fc2.weight: got [{h}, {m + 1}]" in r.stderr
    assert f"expected [{h}, {m}]" in r.stderr


def test_head_count_from_the_config_json_beside_the_weights(test_tool, tmp_path, g):
    """No tensor holds CLIP's head count. Width 96 (not a multiple of CLIP's head width 64) in 3 heads of
    32 loads as a diffusers repo's text_encoder/ folder holds it (transformers' config.json stating
    num_attention_heads, written by save_pretrained, next to the clip_l-layout weights) and matches
    transformers (fp32, rel ≤ 1e-5); the same weights alone are an error naming the file, the width, the
    expected multiple and the fix; a config.json that disagrees with the weights is an error naming its key."""
    c = replace(TINY_CLIP, hidden_size=96, num_attention_heads=3, intermediate_size=384)
    weights = random_state_dict(clip_shapes(c), torch.float32, SEED + 2)
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    save_file(weights, str(folder / "model.safetensors"))
    hf_config(c).save_pretrained(folder)
    ids = draw_ids(g)
    hidden, pooled, _ = cpp(test_tool, tmp_path, folder, ids)
    want_hidden, want_pooled = reference(weights, ids, c)
    assert rel(hidden, want_hidden) <= 1e-5 and rel(pooled, want_pooled) <= 1e-5

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": 5}))
    r = run([test_tool, "clip-forward", folder, tmp_path / "ids.safetensors", tmp_path / "o"], check=False)
    assert r.returncode == 1
    assert f"{folder / 'config.json'}: \"num_attention_heads\" is 5, which does not divide the width 96" in r.stderr

    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 768}))
    r = run([test_tool, "clip-forward", folder, tmp_path / "ids.safetensors", tmp_path / "o"], check=False)
    assert r.returncode == 1
    assert (f"{folder / 'config.json'}: \"hidden_size\" is 768 but the weights of {folder} are 96 wide "
            "(from 'text_model.embeddings.token_embedding.weight'): this config.json does not describe these weights"
            ) in r.stderr, r.stderr

    (folder / "config.json").unlink()
    r = run([test_tool, "clip-forward", folder, tmp_path / "ids.safetensors", tmp_path / "o"], check=False)
    assert r.returncode == 1
    assert (f"{folder}: CLIP text encoder width 96 "
            "(from 'text_model.embeddings.token_embedding.weight') is not a multiple of 64") in r.stderr, r.stderr
    assert "put its transformers config.json (stating \"num_attention_heads\") next to the file" in r.stderr


def test_full_size_keys_on_meta_device(test_tool):
    got = json.loads(run([test_tool, "encoders-keys", "clip"]).stdout)
    real = {k: list(v) for k, v in clip_shapes(CLIP_L).items()}
    assert len(real) == 196
    assert got == real
