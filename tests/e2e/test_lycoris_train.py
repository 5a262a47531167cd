"""Training LyCORIS networks end to end (network_type lokr / loha, dora_wd on lora): a short run saves a
file in LyCORIS's key names with lycoris.kohya metadata whose zero-initialised factors have moved, a run
resumed from a mid-run state writes the byte-identical final file, `inspect` names the type, and the
combinations the network types do not support are named errors before anything runs. The math of each
type is checked against PEFT in tests/parity/test_lycoris.py."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from conftest import run
from train_env import base_env, dataset, lora_tensors, models  # noqa: F401  (fixtures)

TYPES = {
    "lokr": ({"PARAMS_NETWORK_TYPE": "lokr", "PARAMS_FACTOR": "4"}, "LoKr", ("lokr_w1", "lokr_w2_a", "lokr_w2_b")),
    "lokr_decompose_both": ({"PARAMS_NETWORK_TYPE": "lokr", "PARAMS_DECOMPOSE_BOTH": "true", "PARAMS_NETWORK_DIM": "2"},
                            "LoKr", ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")),
    "loha": ({"PARAMS_NETWORK_TYPE": "loha"}, "LoHa", ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")),
    "dora": ({"PARAMS_DORA_WD": "true"}, "LoRA (DoRA)", ("lora_down.weight", "lora_up.weight", "dora_scale")),
}


@pytest.mark.parametrize("kind", list(TYPES))
def test_lycoris_trains_saves_and_resumes_exactly(tmp_path, fluxtrain_bin, models, dataset, kind):
    params, type_name, parts = TYPES[kind]
    straight = tmp_path / "straight"
    env = base_env(models, dataset, straight, PARAMS_MAX_TRAIN_STEPS=4, PARAMS_LEARNING_RATE=0.01, **params)
    result = run([fluxtrain_bin, "train"], env=env)
    final = straight / "flux-lora.safetensors"
    tensors = lora_tensors(final)
    modules = {k.split(".", 1)[0] for k in tensors}
    assert all(m.startswith("lora_unet_") for m in modules)
    for m in modules:
        assert {k.split(".", 1)[1] for k in tensors if k.startswith(m + ".")} == {*parts, "alpha"}, m
    # The factor that starts at zero (LoKr's w2 / w2_b, LoHa's w2_b, LoRA's up) has trained.
    zero_init = {"lokr": "lokr_w2_b", "lokr_decompose_both": "lokr_w2_b", "loha": "hada_w2_b",
                 "dora": "lora_up.weight"}[kind]
    assert all(tensors[f"{m}.{zero_init}"].abs().max() > 0 for m in modules), result.stderr
    with safe_open(str(final), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == ("lora" if kind == "dora" else kind.split("_")[0])
    if kind == "dora":
        assert args["dora_wd"] == "True"
    if kind == "lokr":
        assert args["factor"] == "4"

    info = json.loads(run([fluxtrain_bin, "inspect", "--json", final]).stdout)
    (c,) = info["components"]
    assert c["details"]["adapter"] == type_name, c
    assert type_name in c["description"]

    # Resumed from the state of step 2: the same final file, byte for byte.
    resumed = tmp_path / "resumed"
    (resumed / "state").mkdir(parents=True)
    shutil.copytree(straight / "state" / "step-00000002", resumed / "state" / "step-00000002")
    again = run([fluxtrain_bin, "train"], env=dict(env, OUTPUT_PATH=str(resumed)))
    assert "resumed from" in again.stderr
    assert (resumed / "flux-lora.safetensors").read_bytes() == final.read_bytes()

    # sample with the file, and a bake into the base, read it.
    baked = tmp_path / "baked.safetensors"
    run([fluxtrain_bin, "merge", "--base", models / "flux1-dev.safetensors", "--lora", final, "--out", baked])


@pytest.mark.parametrize("params,needle", [
    ({"PARAMS_NETWORK_TYPE": "lokr", "PARAMS_SPLIT_QKV": "true"}, "PARAMS_SPLIT_QKV"),
    ({"PARAMS_NETWORK_TYPE": "loha", "PARAMS_RANK_DROPOUT": "0.1"}, "PARAMS_RANK_DROPOUT"),
    ({"PARAMS_DORA_WD": "true", "PARAMS_NETWORK_DROPOUT": "0.1"}, "PARAMS_NETWORK_DROPOUT"),
    ({"PARAMS_NETWORK_TYPE": "lokr", "PARAMS_DORA_WD": "true"}, "DoRA on LoKr/LoHa is not supported"),
    ({"PARAMS_FACTOR": "8"}, "set network_type lokr"),
    ({"PARAMS_NETWORK_TYPE": "lokr", "PARAMS_FACTOR": "0"}, "-1 (automatic) or a positive factor"),
], ids=["lokr_split_qkv", "loha_rank_dropout", "dora_dropout", "dora_on_lokr", "factor_without_lokr", "factor_0"])
def test_unsupported_combinations_are_named(tmp_path, fluxtrain_bin, models, dataset, params, needle):
    out = tmp_path / "out"
    result = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **params), check=False)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr
    assert not (out / "flux-lora.safetensors").exists()


def test_merging_lycoris_files_is_a_named_error(tmp_path, fluxtrain_bin, models, dataset):
    out = tmp_path / "run"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=1,
                                                PARAMS_NETWORK_TYPE="loha"))
    result = run([fluxtrain_bin, "merge", "--lora", out / "flux-lora.safetensors", "--lora",
                  out / "flux-lora.safetensors", "--out", tmp_path / "m.safetensors"], check=False)
    assert result.returncode != 0
    assert "is a LyCORIS network" in result.stderr and "merge --base" in result.stderr, result.stderr
