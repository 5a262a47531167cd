"""Block swapping (`blocks_to_swap`, PARAMS_BLOCKS_TO_SWAP) through the real binary on the tiny model set
(2 double + 3 single blocks): the swapped blocks' weights wait in host memory and are copied in per use
(on the CPU into fresh CPU tensors, the same mechanism as on a GPU), and the final LoRA file is byte for
byte the one of the same run without swapping, with and without gradient checkpointing. A count above
the model's maximum is a named error."""
from __future__ import annotations

import pytest

from conftest import run
from train_env import base_env, dataset, models  # noqa: F401  (fixtures)

STEPS = "3"


def train(fluxtrain_bin, models, dataset, out, **params):
    env = base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=STEPS, PARAMS_SAVE_EVERY_N_STEPS="0", **params)
    return run([fluxtrain_bin, "train"], env=env)


@pytest.mark.parametrize("settings", [
    {},
    {"PARAMS_GRADIENT_CHECKPOINTING": "false"},
    {"PARAMS_CHECKPOINT_KEEP_PRODUCTS": "all", "PARAMS_CHECKPOINT_KEEP_ATTENTION": "false",
     "PARAMS_OFFLOAD_CHECKPOINTS": "true", "PARAMS_GRADIENT_CHECKPOINTING_INTERVAL": "2"},
], ids=["checkpointing", "no-checkpointing", "keep-all-offload-interval"])
def test_swapped_run_writes_the_same_lora_bytes(tmp_path, fluxtrain_bin, models, dataset, settings):
    plain = tmp_path / "plain"
    train(fluxtrain_bin, models, dataset, plain, **settings)
    expected = (plain / "flux-lora.safetensors").read_bytes()
    # 4 of 5: double block 1 and the three single blocks; 1: the last single block only.
    for blocks in ("4", "1"):
        out = tmp_path / f"swap{blocks}"
        result = train(fluxtrain_bin, models, dataset, out, PARAMS_BLOCKS_TO_SWAP=blocks, **settings)
        assert f"block swap: the last {blocks} of 5 transformer blocks wait in host memory" in result.stderr, \
            result.stderr
        assert f'blocks_to_swap = "{blocks}"' in (out / "config.toml").read_text()
        assert (out / "flux-lora.safetensors").read_bytes() == expected, (blocks, settings)


@pytest.mark.parametrize("value", ["5", "57"])
def test_too_many_blocks_is_a_named_error(tmp_path, fluxtrain_bin, models, dataset, value):
    out = tmp_path / "run"
    env = base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=STEPS, PARAMS_BLOCKS_TO_SWAP=value)
    result = run([fluxtrain_bin, "train"], env=env, check=False)
    assert result.returncode == 1, result.stderr
    assert f"blocks_to_swap = {value}" in result.stderr, result.stderr
    assert "has 5 transformer blocks (2 double + 3 single)" in result.stderr, result.stderr
    assert "at most 4 can be swapped" in result.stderr and "PARAMS_BLOCKS_TO_SWAP" in result.stderr, result.stderr
    # Checked from the model's header before anything is written: no run folder, no cache.
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_negative_count_and_full_fine_tuning_are_named_errors(tmp_path, fluxtrain_bin, models, dataset):
    negative = run([fluxtrain_bin, "train"],
                   env=base_env(models, dataset, tmp_path / "a", PARAMS_BLOCKS_TO_SWAP="-1"), check=False)
    assert negative.returncode == 1 and "PARAMS_BLOCKS_TO_SWAP" in negative.stderr, negative.stderr
    full = run([fluxtrain_bin, "train"],
               env=base_env(models, dataset, tmp_path / "b", PARAMS_BLOCKS_TO_SWAP="2", PARAMS_NETWORK_TYPE="none"),
               check=False)
    assert full.returncode == 1, full.stderr
    assert "PARAMS_BLOCKS_TO_SWAP" in full.stderr and "PARAMS_NETWORK_TYPE" in full.stderr, full.stderr
    assert not (tmp_path / "b").exists()
