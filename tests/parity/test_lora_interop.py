"""A LoRA saved by fluxtrain, loaded by diffusers (kohya converter + PEFT) into the reference transformer,
gives the same output as fluxtrain's own LoRA forward; fp32 relative error (max|a-b| / max|b|) ≤ 1e-5.

diffusers' kohya converter splits single blocks' linear1 with a literal [3072, 3072, 3072, 12288], so the
model has the real width (hidden 3072, 24 heads) but one double and one single block (~1.9 GB fp32 on
disk) and a handful of tokens. Weights and inputs are drawn fresh on every run from one seed, which the
module prints and a failure's report names (conftest.draw_seed); FLUXTRAIN_TEST_SEED=N replays it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

from conftest import draw_seed, run
from reference import flux_reference as fr
from reference import tiny_models as tm

CFG = replace(tm.FLUX_DEV, depth=1, depth_single_blocks=1, vec_in_dim=32, context_in_dim=64)


rel_err = fr.rel_err


@pytest.fixture(scope="module")
def model(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("lora")
    return (tmp, *fr.lora_test_model(tmp, CFG, draw_seed(request)))


def diffusers_with_lora(sd, lora_path):
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    transformer = fr.diffusers_model(CFG, sd)
    state_dict, alphas = FluxLoraLoaderMixin.lora_state_dict(str(lora_path), return_alphas=True)
    assert all(k.startswith("transformer.") for k in state_dict), [k for k in state_dict if not k.startswith("transformer.")]
    FluxLoraLoaderMixin.load_lora_into_transformer(state_dict, network_alphas=alphas, transformer=transformer)
    return transformer, state_dict


def check_metadata(path, saved, flags):
    """kohya's ss_* keys, SAI modelspec keys, and sshs_model_hash = sha256 of the data area exactly as
    kohya computes it (safetensors.torch.save of the same tensors)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert meta["ss_network_dim"] == "4"
    alpha = float(flags[flags.index("--alpha") + 1]) if "--alpha" in flags else 2.0
    assert float(meta["ss_network_alpha"]) == alpha
    assert meta["ss_base_model_version"] == "flux1"
    args = json.loads(meta["ss_network_args"])
    assert args["train_blocks"] == (flags[flags.index("--train-blocks") + 1] if "--train-blocks" in flags else "all")
    assert ("split_qkv" in args) == ("--split-qkv" in flags)
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.title"] == "interop" and meta["modelspec.trigger_phrase"] == "ohwx"
    data = safetensors_save(saved, metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    n = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest()


@pytest.mark.parametrize("flags", [
    [],
    ["--split-qkv", "1"],
    ["--train-blocks", "single"],
    ["--train-blocks", "double", "--split-qkv", "1", "--alpha", "8"],
], ids=["all", "split_qkv", "single_only", "double_split_alpha8"])
def test_diffusers_loads_our_lora_with_the_same_effect(model, test_tool, flags, caplog):
    tmp, sd, path, inputs, inputs_path, base = model
    lora = tmp / "lora.safetensors"
    out = tmp / "out.safetensors"
    common = ["--rank", "4"] + ([] if "--alpha" in flags else ["--alpha", "2"]) + flags
    # Creates the LoRA, saves it, loads it back from the file and runs fluxtrain's forward with it.
    run([test_tool, "lora-make", path, lora, "--seed", "3", "--random-up", "1"] + common + ["--forward", inputs_path, out])
    saved = load_file(str(lora))
    # Every saved module maps to a model weight under ComfyUI's rule (diffusion_model.X.weight <-> lora_unet_X).
    weights = {"lora_unet_" + k[: -len(".weight")].replace(".", "_") for k in sd if k.endswith(".weight")}
    modules = {k.split(".")[0] for k in saved}
    assert modules <= weights, modules - weights
    assert all(f"{m}.alpha" in saved for m in modules)
    check_metadata(lora, saved, flags)

    ours = load_file(str(out))["out"]

    # diffusers' loggers do not propagate, so pytest would never see their missing/unexpected-key warnings:
    # turn propagation on, and also compare the adapter the loader built with the file's entries directly.
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            transformer, converted = diffusers_with_lora(sd, lora)
    finally:
        diffusers_logging.disable_propagation()
    assert not [r for r in caplog.records if "unexpected" in r.getMessage() or "missing" in r.getMessage()], caplog.text
    loaded = {k: v for k, v in transformer.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
    by_name = {re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", k): v for k, v in loaded.items()}
    expected = {k[len("transformer."):]: v for k, v in converted.items()}
    assert set(by_name) == set(expected), (sorted(set(expected) - set(by_name))[:5], sorted(set(by_name) - set(expected))[:5])
    for name, value in expected.items():
        assert torch.equal(by_name[name].float(), value.float()), name
    with torch.no_grad():
        ref = fr.diffusers_forward(transformer, inputs)
    assert rel_err(ref, base) > 1e-3, "the LoRA had no effect in diffusers"
    err = rel_err(ours, ref)
    print(f"\nlora {flags}: rel err vs diffusers {err:.2e} (LoRA effect {rel_err(ref, base):.2e})")
    assert err <= 1e-5
