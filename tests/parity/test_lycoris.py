"""LyCORIS networks (LoKr, LoHa, DoRA on LoRA) saved by fluxtrain mean, layer by layer, what PEFT's own
modules compute with the same weights, under ComfyUI's reading of the file; fp32, ≤ 1e-5.

For each type the test tool builds the network on the real-width tiny model (hidden 3072, one double and
one single block), draws every factor at random (the zero-initialised ones too; DoRA's magnitude moved off
‖W‖), saves it and runs fluxtrain's training forward through the file it just wrote (load_kohya). Then:
- every key is `lora_unet_<BFL path with . -> _>` + a suffix ComfyUI's weight adapters load, and every
  module maps to a model weight under ComfyUI's key rule;
- per layer, PEFT's LoKrModel / LoHaModel / LoRA(use_dora) with the trained tensors gives ΔW_peft; the
  file read by ComfyUI's rule (transcribed below: ComfyUI is not on PyPI) and fluxtrain's bake
  (`merge --base`, one case per type) give the same ΔW (≤ 1e-5 relative to max|ΔW|);
- the reference forward (diffusers) with the PEFT-merged weights equals fluxtrain's training forward and
  fluxtrain's read_lora + merge_lora forward (what `sample --lora` runs), ≤ 1e-5 relative.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import draw_seed, run
from reference import flux_reference as fr
from reference.lycoris_reference import comfy_weight, peft_delta
from reference import tiny_models as tm

CFG = replace(tm.FLUX_DEV, depth=1, depth_single_blocks=1, vec_in_dim=32, context_in_dim=64)

# (tool flags, expected factor parts of a module); alpha 2 unless the case sets it.
CASES = {
    "lokr_factor8": (["--network-type", "lokr", "--factor", "8", "--rank", "4"], {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}),
    "lokr_full_matrix": (["--network-type", "lokr", "--factor", "8", "--rank", "4", "--full-matrix", "1"],
                         {"lokr_w1", "lokr_w2"}),
    "lokr_decompose_both": (["--network-type", "lokr", "--rank", "4", "--decompose-both", "1"],
                            {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"}),
    "lokr_large_rank": (["--network-type", "lokr", "--rank", "96"], {"lokr_w1", "lokr_w2"}),
    "loha": (["--network-type", "loha", "--rank", "4"], {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}),
    "dora": (["--network-type", "lora", "--dora-wd", "1", "--rank", "4"], {"lora_down.weight", "lora_up.weight"}),
}

BAKED = {"lokr_factor8", "loha", "dora"}

# The tensor names ComfyUI's weight adapters load per module (comfy/weight_adapter/{lora,lokr,loha}.py
# and comfy/lora.py's common ".alpha" / ".dora_scale").
COMFY_SUFFIXES = {"lora_up.weight", "lora_down.weight", "alpha", "dora_scale", "lokr_w1", "lokr_w2", "lokr_w1_a",
                  "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "hada_w1_a", "hada_w1_b", "hada_w2_a",
                  "hada_w2_b", "hada_t1", "hada_t2"}


rel_err = fr.rel_err


@pytest.fixture(scope="module")
def model(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("lycoris")
    return (tmp, *fr.lora_test_model(tmp, CFG, draw_seed(request)))


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_file_means_the_peft_module(model, test_tool, fluxtrain_bin, case):
    tmp, sd, path, inputs, inputs_path, base = model
    flags, factor_parts = CASES[case]
    flags = flags + ["--alpha", "2"]
    lora = tmp / f"{case}.safetensors"
    out_train = tmp / f"{case}_train.safetensors"
    params_path = tmp / f"{case}_params.safetensors"
    run([test_tool, "lora-make", path, lora, "--seed", "3", "--random-up", "1", *flags, "--params", params_path,
         "--forward", inputs_path, out_train])
    saved = load_file(str(lora))
    params = load_file(str(params_path))
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == ("lora" if case == "dora" else case.split("_")[0])
    assert ("dora_wd" in args) == (case == "dora")

    # ComfyUI's key rule: module = lora_unet_ + BFL path with '.' -> '_', suffix one its adapters load.
    weights = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): k for k in sd if k.endswith(".weight")}
    modules = {}
    for key, value in saved.items():
        module, suffix = key.split(".", 1)
        assert suffix in COMFY_SUFFIXES, key
        assert module in weights, key
        modules.setdefault(module, {})[suffix] = value
    assert len(modules) == 10 + 3, sorted(modules)  # every Linear of one double and one single block
    for module, t in modules.items():
        expected = factor_parts | {"alpha"} | ({"dora_scale"} if case == "dora" else set())
        assert set(t) == expected, (module, sorted(t))

    # ΔW per layer: PEFT's, ComfyUI's reading of the file, fluxtrain's bake (one case per type: the bake
    # reads files through the same functions for every LoKr form, and each bake writes ~2 GB).
    baked_sd = None
    if case in BAKED:
        baked = tmp / f"{case}_baked.safetensors"
        run([fluxtrain_bin, "merge", "--base", path, "--lora", lora, "--out", baked])
        with safe_open(str(baked), "pt") as f:
            baked_sd = {weights[m]: f.get_tensor(weights[m]) for m in modules}
        baked.unlink()
    factor = int(flags[flags.index("--factor") + 1]) if "--factor" in flags else -1
    merged_sd = dict(sd)
    worst = {"comfy": 0.0, "bake": 0.0}
    for module, t in modules.items():
        key = weights[module]
        w = sd[key]
        bias = sd.get(key[: -len(".weight")] + ".bias")
        p = {"down": t.get("lora_down.weight"), "up": t.get("lora_up.weight"), "magnitude": params.get(module + ".magnitude")}
        ref = peft_delta(w, bias, t, p, factor)
        assert ref.abs().max() > 0, module
        comfy = comfy_weight(w, t) - w
        worst["comfy"] = max(worst["comfy"], rel_err(comfy, ref))
        if baked_sd is not None:
            worst["bake"] = max(worst["bake"], rel_err(baked_sd[key] - w, ref))
        merged_sd[key] = w + ref
    bake_text = f"{worst['bake']:.2e}" if baked_sd is not None else "(not baked)"
    print(f"\n{case}: ΔW rel err vs PEFT: ComfyUI's reading {worst['comfy']:.2e}, fluxtrain bake {bake_text}")
    assert worst["comfy"] <= 1e-5 and worst["bake"] <= 1e-5, worst

    # The forward: reference with PEFT-merged weights vs fluxtrain's training forward and sample's merge.
    out_apply = tmp / f"{case}_apply.safetensors"
    run([test_tool, "lora-apply", path, lora, inputs_path, out_apply])
    with torch.no_grad():
        ref = fr.diffusers_forward(fr.diffusers_model(CFG, merged_sd), inputs)
    assert rel_err(ref, base) > 1e-3, "the network had no effect"
    train_err = rel_err(load_file(str(out_train))["out"], ref)
    apply_err = rel_err(load_file(str(out_apply))["out"], ref)
    print(f"{case}: forward rel err: training {train_err:.2e}, merged (sample) {apply_err:.2e}")
    assert train_err <= 1e-5 and apply_err <= 1e-5


def test_factorization_is_lycoris_and_peft(test_tool):
    """LoKr's factor pairs, against PEFT's factorization (LyCORIS's, without its m <= n swap, which only
    matters for factors above the square root)."""
    from peft.tuners.lokr.layer import factorization

    cases = [(3072, -1), (3072, 8), (3072, 4), (21504, -1), (12288, 16), (9216, -1), (127, -1), (64, 8), (3072, 5)]
    out = run([test_tool, "lokr-factorization", *[f"{d}:{f}" for d, f in cases]]).stdout.split()
    assert out == [f"{m}x{n}" for m, n in (factorization(d, f) for d, f in cases)], out
