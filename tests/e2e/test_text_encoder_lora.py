"""Text-encoder LoRA end to end (kohya's network_train_unet_only=false / text_encoder_lr / train_t5xxl):
a short run on the tiny model set trains CLIP-L adapters (lora_te1_ modules in kohya's names beside the
transformer's) and resumes byte-exactly; diffusers' Flux LoRA loader takes the whole file (transformer and
text encoder) with no unexpected or missing key and its CLIP text model then gives our embeddings; `sample`
applies the text-encoder part (the picture equals the reference pipeline's with diffusers' CLIP LoRA), and so
do the samples during training (the prompts encoded by the encoders as trained); asking for the text cache
with a trained encoder is a named error.

Tolerances: CLIP outputs (last hidden state and pooled) fp32, rel = max|a - b| / max|b| <= 1e-5 against
transformers' CLIPTextModel with the adapters diffusers/PEFT build from our file; pictures as test_sample.py
(<= 1 level, <= 0.5% of the values differ). The run trains the double blocks only (train_blocks=double):
diffusers' kohya converter splits single blocks' linear1 with Flux.1's literal widths, which the tiny model
does not have (test_lora_interop.py checks single blocks at the real width).
"""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run
from reference import flux_reference as fr
from reference import tiny_models as tm
from test_sample import Reference, compare, not_flat
from test_sample import sample as run_sample
from train_env import (base_env, comfyui_graph, dataset, kill_after_state_and_resume, lora_tensors,  # noqa: F401
                       models)

BOS, EOS = 49406, 49407
# alpha 2 with rank 4: a scale of 0.5, so a loader that ignored alpha / rank would differ.
TE_ENV = {"PARAMS_TEXT_ENCODER_LR": "0.01", "PARAMS_TRAIN_BLOCKS": "double", "PARAMS_MAX_TRAIN_STEPS": "8",
          "PARAMS_SAVE_EVERY_N_STEPS": "2", "PARAMS_NETWORK_ALPHA": "2"}
CLIP_MODULES = {f"lora_te1_text_model_encoder_layers_{i}_{name}" for i in range(tm.TINY_CLIP.num_hidden_layers)
                for name in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                             "mlp_fc1", "mlp_fc2")}
T5_MODULES = {f"lora_te3_encoder_block_{i}_{name}" for i in range(tm.TINY_T5.num_layers)
              for name in ("layer_0_SelfAttention_q", "layer_0_SelfAttention_k", "layer_0_SelfAttention_v",
                           "layer_0_SelfAttention_o", "layer_1_DenseReluDense_wi_0", "layer_1_DenseReluDense_wi_1",
                           "layer_1_DenseReluDense_wo")}


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def modules(tensors, prefix):
    return {k.split(".")[0] for k in tensors if k.startswith(prefix)}


def metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fluxtrain_bin, models, dataset):
    out = tmp_path_factory.mktemp("te") / "run"
    result = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **TE_ENV))
    return out, result


def reference_clip(models):
    from transformers import CLIPTextConfig, CLIPTextModel

    c = tm.TINY_CLIP
    config = CLIPTextConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                            max_position_embeddings=c.max_position_embeddings, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS)
    config._attn_implementation = "eager"
    model = CLIPTextModel(config).eval()
    model.load_state_dict({k.removeprefix("text_model."): v.float()
                           for k, v in load_file(str(models / "clip_l.safetensors")).items()}, strict=True)
    return model


def diffusers_load(path, caplog, clip=None, transformer=None):
    """FluxLoraLoaderMixin (what FluxPipeline.load_lora_weights runs): the kohya file converted, then loaded into
    the text encoder and the transformer given; returns the converted state dict. Fails on any missing /
    unexpected key warning (diffusers' loggers do not propagate unless told to)."""
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            state_dict, alphas = FluxLoraLoaderMixin.lora_state_dict(str(path), return_alphas=True)
            if clip is not None:
                FluxLoraLoaderMixin.load_lora_into_text_encoder(state_dict, network_alphas=alphas, text_encoder=clip,
                                                                prefix="text_encoder")
            if transformer is not None:
                FluxLoraLoaderMixin.load_lora_into_transformer(
                    {k: v for k, v in state_dict.items() if k.startswith("transformer.")}, network_alphas=alphas,
                    transformer=transformer)
    finally:
        diffusers_logging.disable_propagation()
    bad = [r.getMessage() for r in caplog.records if any(w in r.getMessage().lower()
                                                         for w in ("unexpected", "missing", "unsupported", "unused"))]
    assert not bad, bad
    return state_dict


def draw_ids(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((2, 77), EOS, dtype=torch.long)
    for row, words in enumerate((5, 30)):
        ids[row, 0] = BOS
        ids[row, 1:1 + words] = torch.randint(0, BOS, (words,), generator=g)
    return ids


def ours(test_tool, tmp_path, models, ids, *flags, encoder="clip"):
    src, out = tmp_path / "ids.safetensors", tmp_path / f"out{len(list(tmp_path.iterdir()))}.safetensors"
    save_file({"ids": ids}, str(src))
    model = models / ("clip_l.safetensors" if encoder == "clip" else "t5xxl_fp16.safetensors")
    run([test_tool, f"{encoder}-forward", model, src, out, *flags])
    return load_file(str(out))


# --- training ---------------------------------------------------------------------------------------------

def test_text_encoder_lr_trains_clip_adapters_into_the_file(trained):
    out, result = trained
    t = lora_tensors(out / "flux-lora.safetensors")
    assert modules(t, "lora_te1_") == CLIP_MODULES
    assert not modules(t, "lora_te3_"), "T5 trained without train_t5xxl"
    assert modules(t, "lora_unet_double_blocks_") and not modules(t, "lora_unet_single_blocks_")
    for m in CLIP_MODULES:
        assert t[f"{m}.lora_down.weight"].shape == (4, tm.TINY_CLIP.hidden_size if "fc2" not in m
                                                   else tm.TINY_CLIP.intermediate_size)
        assert t[f"{m}.lora_up.weight"].abs().max() > 0, f"{m}: its up matrix did not train"
        assert float(t[f"{m}.alpha"]) == 2.0
    meta = metadata(out / "flux-lora.safetensors")
    assert meta["ss_text_encoder_lr"] == "0.01"
    assert meta["ss_network_train_unet_only"] == "False"
    assert meta["ss_cache_text_encoder_outputs"] == "False"
    assert "text cache off" in result.stderr
    assert "text-encoder LoRA: 12 CLIP-L modules at text_encoder_lr 0.01" in result.stderr


def test_text_encoder_lr_is_the_clip_adapters_own(tmp_path, fluxtrain_bin, models, dataset, trained):
    """The same run with text_encoder_lr = learning_rate: the transformer's adapters start alike, the CLIP
    adapters train at another rate (AdamW's first steps move each weight by about lr)."""
    out = tmp_path / "same_lr"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **{**TE_ENV, "PARAMS_TEXT_ENCODER_LR": "0.001",
                                                                        "PARAMS_MAX_TRAIN_STEPS": "2"}))
    slow = lora_tensors(out / "flux-lora.safetensors")
    fast = lora_tensors(trained[0] / "flux-lora-step00000002.safetensors")
    m = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"
    ratio = float(fast[m].float().abs().mean() / slow[m].float().abs().mean())
    assert 5 < ratio < 20, ratio


def test_resume_is_byte_exact(tmp_path, fluxtrain_bin, models, dataset, trained):
    out = tmp_path / "killed"
    kill_after_state_and_resume(fluxtrain_bin, base_env(models, dataset, out, **TE_ENV), out, 4)
    assert (trained[0] / "flux-lora.safetensors").read_bytes() == (out / "flux-lora.safetensors").read_bytes()


@pytest.mark.parametrize("env,needles", [
    ({"PARAMS_TEXT_ENCODER_LR": "0.01", "PARAMS_CACHE_TEXT_ENCODER_OUTPUTS": "true"},
     ["cache_text_encoder_outputs", "network_train_unet_only", "set cache_text_encoder_outputs=false"]),
    ({"PARAMS_NETWORK_TRAIN_UNET_ONLY": "false", "PARAMS_CACHE_TEXT_ENCODER_OUTPUTS": "1"},
     ["PARAMS_CACHE_TEXT_ENCODER_OUTPUTS", "PARAMS_NETWORK_TRAIN_UNET_ONLY", "cannot be cached"]),
    ({"PARAMS_TEXT_ENCODER_LR": "0.01", "PARAMS_NETWORK_TRAIN_UNET_ONLY": "true"},
     ["PARAMS_TEXT_ENCODER_LR", "PARAMS_NETWORK_TRAIN_UNET_ONLY", "trains the transformer only"]),
    ({"PARAMS_TRAIN_T5XXL": "true", "PARAMS_NETWORK_TRAIN_UNET_ONLY": "true"},
     ["PARAMS_TRAIN_T5XXL", "PARAMS_NETWORK_TRAIN_UNET_ONLY"]),
    ({"PARAMS_TEXT_ENCODER_LR": "0.5", "PARAMS_OPTIMIZER_TYPE": "Prodigy"}, ["PARAMS_TEXT_ENCODER_LR", "Prodigy"]),
], ids=["cache_and_text_encoder_lr", "cache_and_unet_only_false", "lr_and_unet_only", "t5_and_unet_only",
        "prodigy"])
def test_conflicting_options_are_named_errors(tmp_path, fluxtrain_bin, models, dataset, env, needles):
    out = tmp_path / "run"
    r = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **env), check=False)
    assert r.returncode != 0
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr[-2000:])
    assert not (out / "flux-lora.safetensors").exists()


# --- diffusers loads the file, and gives our embeddings ---------------------------------------------------

def test_diffusers_loads_the_whole_file_and_gives_our_clip_outputs(tmp_path, test_tool, models, trained, caplog):
    path = trained[0] / "flux-lora.safetensors"
    clip = reference_clip(models)
    flux_sd = {k: v.float() for k, v in load_file(str(models / "flux1-dev.safetensors")).items()}
    transformer = fr.diffusers_model(tm.TINY_FLUX, flux_sd)
    converted = diffusers_load(path, caplog, clip=clip, transformer=transformer)
    file_modules = {k.split(".")[0] for k in lora_tensors(path)}
    # Every module of the file was converted (diffusers keeps A and B per converted module) and loaded.
    te_keys = [k for k in converted if k.startswith("text_encoder.")]
    assert len(te_keys) == 2 * len(CLIP_MODULES)
    assert all(k.startswith(("transformer.", "text_encoder.")) for k in converted)
    loaded = [k for k in clip.state_dict() if ".lora_A." in k or ".lora_B." in k]
    assert len(loaded) == 2 * len(CLIP_MODULES), loaded
    assert len([k for k in transformer.state_dict() if ".lora_A." in k]) > 0
    assert len(file_modules) == len(CLIP_MODULES) + len(modules(lora_tensors(path), "lora_unet_"))

    ids = draw_ids(5)
    with torch.no_grad():
        ref = clip(input_ids=ids)
    base = ours(test_tool, tmp_path, models, ids)
    print()
    for mode in ("adapter", "merge"):
        got = ours(test_tool, tmp_path, models, ids, "--lora", path, "--lora-mode", mode, "--rank", "4")
        pooled, hidden = rel(got["pooled"], ref.pooler_output), rel(got["last_hidden_state"], ref.last_hidden_state)
        effect = rel(base["pooled"], ref.pooler_output)
        print(f"CLIP LoRA ({mode}): pooled rel {pooled:.2e}, hidden rel {hidden:.2e}; LoRA effect {effect:.2e}")
        assert effect > 1e-4, "the trained CLIP LoRA changes nothing"
        assert pooled <= 1e-5 and hidden <= 1e-5


# --- sample ----------------------------------------------------------------------------------------------

def test_sample_applies_the_text_encoder_lora(tmp_path, fluxtrain_bin, tokenize_tool, models, trained, caplog):
    # The trained file's CLIP part, its up matrices scaled up so the picture changes visibly in 4 steps.
    te = {k: (v * 40 if k.endswith("lora_up.weight") else v)
          for k, v in lora_tensors(trained[0] / "flux-lora.safetensors").items() if k.startswith("lora_te1_")}
    path = tmp_path / "te.safetensors"
    save_file(te, str(path))
    ref = Reference(models, tokenize_tool)
    model = ref.transformer()
    base = ref.image(model, "ohwx, a red square", 21)
    diffusers_load(path, caplog, clip=ref.clip)
    want = ref.image(model, "ohwx, a red square", 21)
    assert np.abs(want.astype(int) - base.astype(int)).max() > 10, "the CLIP LoRA changed nothing in the reference"
    out = tmp_path / "out"
    result = run_sample(fluxtrain_bin, models, out, "--prompt", "ohwx, a red square", "--width", "64", "--height",
                        "48", "--steps", "4", "--seed", "21", "--lora", path)
    assert "12 CLIP-L and 0 T5 modules merged into the text encoders" in result.stderr
    not_flat(compare(next(out.iterdir()), want))
    # The PNG's ComfyUI graph loads the file with LoraLoader (model and CLIP).
    assert [(n["lora_name"], n["strength_clip"]) for n in comfyui_graph(next(out.iterdir()))["LoraLoader"]] == \
        [("te.safetensors", 1.0)]


def test_training_samples_encode_the_prompts_with_the_trained_encoders(tmp_path, fluxtrain_bin, models, dataset,
                                                                       trained):
    """The samples of a run that trains a CLIP LoRA are rendered with the prompts encoded by the encoders as
    trained: the picture of the last step of a run started from a file with a strong CLIP LoRA (its up matrices
    x40) equals `fluxtrain sample --lora` with the file the run saved (fp32, no fp8 base: the weights `sample`
    uses), and differs from the picture with
    the base encoders (the file's transformer part only); its ComfyUI graph loads the file of its step with
    LoraLoader, which patches the CLIP the prompt is encoded with."""
    start = {k: (v * 40 if k.startswith("lora_te1_") and k.endswith("lora_up.weight") else v)
             for k, v in lora_tensors(trained[0] / "flux-lora.safetensors").items()}
    weights = tmp_path / "start.safetensors"
    save_file(start, str(weights))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ohwx, a red square --w 64 --h 48 --s 4 --d 21\n")
    out = tmp_path / "run"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **{
        **TE_ENV, "PARAMS_NETWORK_WEIGHTS": weights, "PARAMS_MAX_TRAIN_STEPS": 2, "PARAMS_SAMPLE_EVERY_N_STEPS": 1,
        "PARAMS_SAVE_EVERY_N_STEPS": 1,
        "PARAMS_SAVE_PRECISION": "fp32", "PARAMS_FP8_BASE": "false", "SAMPLE_PROMPTS": prompts}))
    during = out / "samples" / "flux-lora_000002_00_21.png"
    final = out / "flux-lora.safetensors"
    assert modules(lora_tensors(final), "lora_te1_") == CLIP_MODULES
    args = ("--prompt", "ohwx, a red square", "--width", "64", "--height", "48", "--steps", "4", "--seed", "21")
    run_sample(fluxtrain_bin, models, tmp_path / "with", *args, "--lora", final)
    got = compare(during, np.asarray(Image.open(next((tmp_path / "with").iterdir())).convert("RGB")))
    not_flat(got)
    transformer_only = tmp_path / "transformer-only.safetensors"
    save_file({k: v for k, v in lora_tensors(final).items() if not k.startswith("lora_te")}, str(transformer_only))
    run_sample(fluxtrain_bin, models, tmp_path / "base", *args, "--lora", transformer_only)
    base = np.asarray(Image.open(next((tmp_path / "base").iterdir())).convert("RGB"))
    assert np.abs(got.astype(int) - base.astype(int)).max() > 10, "the CLIP LoRA changed nothing in the sample"
    # Each graph loads the file saved at its step, which is there: step 1's step file, the final file at the
    # last step (which saves no step file).
    for step, file in ((1, "flux-lora-step00000001.safetensors"), (2, "flux-lora.safetensors")):
        loaders = comfyui_graph(out / "samples" / f"flux-lora_{step:06d}_00_21.png")
        assert "LoraLoaderModelOnly" not in loaders
        assert [(n["lora_name"], n["strength_model"], n["strength_clip"]) for n in loaders["LoraLoader"]] == \
            [(file, 1.0, 1.0)]
        assert (out / file).exists()


def test_inspect_counts_the_text_encoder_modules(fluxtrain_bin, trained):
    r = run([fluxtrain_bin, "inspect", trained[0] / "flux-lora.safetensors"])
    assert f" transformer, {len(CLIP_MODULES)} CLIP, 0 T5;" in r.stdout, r.stdout


# --- T5-XXL (train_t5xxl) -------------------------------------------------------------------------------

def reference_t5_with_lora(models, lora_path):
    """transformers' T5EncoderModel with PEFT's LoRA layers on q/k/v/o/wi_0/wi_1/wo, loaded from the file by
    ComfyUI's name rule (lora_te3_ + module path with '.' -> '_'). diffusers' Flux loader drops kohya's T5
    modules, so PEFT itself is the reference here."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    model = tm.transformers_t5(models / "t5xxl_fp16.safetensors")
    if lora_path is None:
        return model
    tensors = {k: v.float() for k, v in lora_tensors(lora_path).items() if k.startswith("lora_te3_")}
    names = {"lora_te3_" + n.replace(".", "_"): n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    alphas = {float(tensors[f"{m}.alpha"]) for m in modules(tensors, "lora_te3_")}
    assert len(alphas) == 1
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=alphas.pop(),
                                       target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"]), model)
    state = {}
    for m in modules(tensors, "lora_te3_"):
        state[f"{names[m]}.lora_A.weight"] = tensors[f"{m}.lora_down.weight"]
        state[f"{names[m]}.lora_B.weight"] = tensors[f"{m}.lora_up.weight"]
    result = set_peft_model_state_dict(model, state)
    assert not result.unexpected_keys, result.unexpected_keys
    assert len([k for k in model.state_dict() if ".lora_A." in k]) == len(T5_MODULES)
    return model


def test_train_t5xxl_trains_t5_adapters_that_peft_reproduces(tmp_path, fluxtrain_bin, test_tool, models, dataset):
    out = tmp_path / "t5"
    result = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **{
        **TE_ENV, "PARAMS_TRAIN_T5XXL": "true", "PARAMS_MAX_TRAIN_STEPS": "3", "PARAMS_SAVE_EVERY_N_STEPS": "0"}))
    path = out / "flux-lora.safetensors"
    t = lora_tensors(path)
    assert modules(t, "lora_te3_") == T5_MODULES and modules(t, "lora_te1_") == CLIP_MODULES
    for m in T5_MODULES:
        assert t[f"{m}.lora_up.weight"].abs().max() > 0, f"{m}: its up matrix did not train"
    assert json.loads(metadata(path)["ss_network_args"])["train_t5xxl"] == "True"
    assert "12 CLIP-L modules, 14 T5-XXL modules" in result.stderr

    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 1000, (2, 12), generator=g)
    ids[:, -1] = 1  # </s>
    with torch.no_grad():
        ref = reference_t5_with_lora(models, path)(input_ids=ids).last_hidden_state
        base = reference_t5_with_lora(models, None)(input_ids=ids).last_hidden_state
    assert rel(base, ref) > 1e-4, "the trained T5 LoRA changes nothing"
    print()
    for mode in ("adapter", "merge"):
        got = ours(test_tool, tmp_path, models, ids, "--lora", path, "--lora-mode", mode, "--rank", "4", encoder="t5")
        err = rel(got["hidden"], ref)
        print(f"T5 LoRA ({mode}): hidden rel {err:.2e}; LoRA effect {rel(base, ref):.2e}")
        assert err <= 1e-5
