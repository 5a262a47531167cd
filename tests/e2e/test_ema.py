"""The EMA of the trained weights (ema_decay, issue 23): against diffusers' EMAModel (the reference the common
trainers use) fed the same per-step LoRA weights, exact resume with the EMA in the state, and samples rendered
with the EMA weights (ema_samples). Runs on the tiny model set of train_env.py."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import run
from train_env import base_env, comfyui_graph, dataset, kill_after_state_and_resume, lora_tensors, models  # noqa: F401

STEPS = 20


def reference_ema(out, steps: int, interval: int, **kwargs) -> tuple[dict[str, torch.Tensor], float]:
    """diffusers.training_utils.EMAModel over the LoRA weights of every step (the fp32 files of
    save_every_n_steps = 1), stepped after every `interval` steps as the trainer does; returns its averages
    by tensor key and its last decay."""
    from diffusers.training_utils import EMAModel

    def weights(step):
        name = "flux-lora.safetensors" if step == STEPS else f"flux-lora-step{step:08d}.safetensors"
        return lora_tensors(out / name)

    first = weights(1)
    keys = sorted(k for k in first if not k.endswith(".alpha"))  # alpha is not trained
    params = [torch.nn.Parameter(first[k].clone()) for k in keys]
    ema = EMAModel(params, **kwargs)
    for step in range(1, steps + 1):
        if step % interval:
            continue
        current = weights(step)
        with torch.no_grad():
            for p, k in zip(params, keys):
                p.copy_(current[k])
        ema.step(params)
    return dict(zip(keys, ema.shadow_params)), ema.cur_decay_value


CASES = {
    # The default rule min(decay, (1 + s) / (10 + s)): the cap 0.6 is reached at s = 13.
    "default": ({"PARAMS_EMA_DECAY": 0.6}, 1, {"decay": 0.6}),
    # The warm-up rule with every knob off its default, updates every 2 steps, kept on the device.
    "warmup": ({"PARAMS_EMA_DECAY": 0.7, "PARAMS_USE_EMA_WARMUP": "true", "PARAMS_EMA_INV_GAMMA": 2,
                "PARAMS_EMA_POWER": 0.75, "PARAMS_EMA_UPDATE_AFTER_STEP": 1, "PARAMS_EMA_MIN_DECAY": 0.2,
                "PARAMS_EMA_UPDATE_INTERVAL": 2, "PARAMS_EMA_DEVICE": "accelerator"}, 2,
               {"decay": 0.7, "use_ema_warmup": True, "inv_gamma": 2, "power": 0.75, "update_after_step": 1,
                "min_decay": 0.2}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ema_equals_diffusers_ema_model(tmp_path, fluxtrain_bin, models, dataset, case):
    """20 steps (AdamW, lr 1e-2, fp32 files of every step): the EMA file of step 10 and the final one equal
    diffusers' EMAModel fed the same per-step weights, max |difference| <= 1e-6 (fp32; in practice 0). The EMA
    is not the live LoRA (they differ by more than 1e-4), and its alphas are the live file's."""
    params, interval, kwargs = CASES[case]
    out = tmp_path / "run"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=STEPS,
                                               PARAMS_SAVE_EVERY_N_STEPS=1, PARAMS_SAVE_STATE="false",
                                               PARAMS_SAVE_PRECISION="fp32", PARAMS_LEARNING_RATE=0.01,
                                               PARAMS_LEARNING_SCHEDULER="constant", **params))
    for steps, name in ((10, "flux-lora-step00000010-ema.safetensors"), (STEPS, "flux-lora-ema.safetensors")):
        ours = lora_tensors(out / name)
        reference, decay = reference_ema(out, steps, interval, **kwargs)
        assert set(ours) - set(reference) == {k for k in ours if k.endswith(".alpha")}
        worst = max(float((ours[k] - reference[k]).abs().max()) for k in reference)
        live = lora_tensors(out / name.replace("-ema", ""))
        moved = max(float((ours[k] - live[k]).abs().max()) for k in reference)
        print(f"\nEMA {case} after {steps} steps: max |ours - EMAModel| {worst:.2e}, |EMA - live| {moved:.2e}, "
              f"last decay {decay:.4f}")
        assert worst <= 1e-6, (case, steps, worst)
        assert moved > 1e-4
        assert all(torch.equal(ours[k], live[k]) for k in ours if k.endswith(".alpha"))
    if case == "default":
        assert decay == 0.6  # the cap was reached


def test_kill_9_and_restart_with_ema_gives_the_same_files(tmp_path, fluxtrain_bin, models, dataset):
    """kill -9 after the state of step 4 and a restart: the final LoRA, its EMA and the EMA file of step 6
    are byte-identical to an uninterrupted run's; the state holds the EMA (ema.safetensors, checked by its
    COMPLETE)."""
    params = {"PARAMS_EMA_DECAY": 0.9, "PARAMS_USE_EMA_WARMUP": "true"}
    straight = tmp_path / "straight"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, straight, **params))
    out = tmp_path / "killed"
    kill_after_state_and_resume(fluxtrain_bin, base_env(models, dataset, out, **params), out, 4)
    for name in ("flux-lora.safetensors", "flux-lora-ema.safetensors", "flux-lora-step00000006-ema.safetensors"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    state = sorted((out / "state").glob("step-*"))[-1]
    assert "ema.safetensors" in json.loads((state / "COMPLETE").read_text())["files"]
    assert json.loads((state / "state.json").read_text())["ema"]["updates"] == 8


def test_ema_samples_are_rendered_with_the_ema_weights(tmp_path, fluxtrain_bin, models, dataset):
    """ema_samples: with an EMA that only copies the weights (ema_update_after_step beyond the run) the sample
    has the same pixels as the run without EMA; with a real EMA (decay 0.9, lr 1e-2) it differs, and its ComfyUI
    graph loads the EMA file."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ohwx, a red square --w 32 --h 32 --s 2 --d 1\n")

    def sample(name, **params):
        out = tmp_path / name
        run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=4,
                                                   PARAMS_SAVE_EVERY_N_STEPS=0, PARAMS_SAMPLE_EVERY_N_STEPS=4,
                                                   PARAMS_LEARNING_RATE=0.01, SAMPLE_PROMPTS=prompts, **params))
        return out / "samples" / "flux-lora_000004_00_1.png"

    live = sample("live")
    copy = sample("copy", PARAMS_EMA_DECAY=0.9, PARAMS_EMA_UPDATE_AFTER_STEP=100, PARAMS_EMA_SAMPLES="true")
    ema = sample("ema", PARAMS_EMA_DECAY=0.9, PARAMS_EMA_SAMPLES="true")
    pixels = {name: Image.open(png).tobytes() for name, png in (("live", live), ("copy", copy), ("ema", ema))}
    assert pixels["copy"] == pixels["live"]
    assert pixels["ema"] != pixels["live"]
    assert [n["lora_name"] for n in comfyui_graph(ema)["LoraLoaderModelOnly"]] == ["flux-lora-ema.safetensors"]


def test_ema_with_full_fine_tuning_is_a_named_error(tmp_path, fluxtrain_bin, models, dataset):
    out = tmp_path / "run"
    result = run([fluxtrain_bin, "train"], check=False,
                 env=base_env(models, dataset, out, PARAMS_EMA_DECAY=0.99, PARAMS_NETWORK_TYPE="none"))
    assert result.returncode != 0
    assert "PARAMS_EMA_DECAY" in result.stderr and "PARAMS_NETWORK_TYPE" in result.stderr, result.stderr
    assert not (out / "flux-lora-ema.safetensors").exists()
