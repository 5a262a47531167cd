"""Starting a run from a LoRA file (network_weights) in kohya, ComfyUI and diffusers/PEFT layouts, and
dim_from_weights (issue 23 item 7), on the tiny model set of train_env.py.

How "run B continues run A's loss curve" is compared, exactly: run A trains 3 steps and logs, with its last
step, the validation loss of its final weights (the held-out images at the validation's fixed sigmas and fixed
noise: the same data and noise every time it is computed). Run B starts from A's final file with one step
whose learning rate is 0 (constant_with_warmup with one warm-up step: diffusers' warm-up starts at 0), so its
weights after that step (saved, and validated with it) are still the file's, and logs the validation loss of them on the same images and
noise. A correct load gives B's loss equal to A's end; a module loaded into the wrong place, a lost module or
a wrong scale does not. (B's training loss is not compared: its generators start fresh, so its first batch
sees other noise than A's last step did.)"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import run
from train_env import base_env, dataset, lora_tensors, metrics, models  # noqa: F401  (fixtures)

# A LoRA with per-module ranks and not every block: the image MLPs rank 2, the others 4, the single block 0
# only; alpha 2 (scale 1/2).
A_NETWORK = {"PARAMS_NETWORK_DIM": 4, "PARAMS_NETWORK_ALPHA": 2, "PARAMS_IMG_MLP_DIM": 2,
             "PARAMS_TRAIN_SINGLE_BLOCK_INDICES": "0"}


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def train(fluxtrain_bin, models, dataset, out, check=True, **params):
    params = {"PARAMS_MAX_TRAIN_STEPS": 3, "PARAMS_SAVE_EVERY_N_STEPS": 0, "PARAMS_SAVE_PRECISION": "fp32",
              "PARAMS_LEARNING_RATE": 0.01, "PARAMS_LEARNING_SCHEDULER": "constant",
              "PARAMS_VALIDATION_SPLIT": 0.34, **params}
    return run([fluxtrain_bin, "train"], check=check, env=base_env(models, dataset, out, **params))


def end_loss(out) -> float:
    return [line for line in metrics(out) if "validation_loss" in line][-1]["validation_loss"]


@pytest.fixture(scope="module")
def run_a(area, fluxtrain_bin, models, dataset):
    out = area / "a"
    train(fluxtrain_bin, models, dataset, out, **A_NETWORK)
    return out / "flux-lora.safetensors", end_loss(out)


@pytest.fixture(scope="module")
def run_a_double(area, fluxtrain_bin, models, dataset):
    """Double blocks only: diffusers' kohya converter splits single blocks' linear1 at the real model's widths."""
    out = area / "a-double"
    train(fluxtrain_bin, models, dataset, out, PARAMS_NETWORK_ALPHA=2, PARAMS_TRAIN_BLOCKS="double")
    return out / "flux-lora.safetensors", end_loss(out)


def continued(area, fluxtrain_bin, models, dataset, name, weights, **params):
    """Run B from `weights`: its first step at learning rate 0 (a warm-up must be shorter than the run, so B has
    two steps), saved and validated; that step's metrics line and file."""
    out = area / name
    result = train(fluxtrain_bin, models, dataset, out, PARAMS_NETWORK_WEIGHTS=weights, PARAMS_MAX_TRAIN_STEPS=2,
                   PARAMS_SAVE_EVERY_N_STEPS=1, PARAMS_LEARNING_SCHEDULER="constant_with_warmup",
                   PARAMS_LR_WARMUP_STEPS=1, **params)
    line = metrics(out)[0]
    assert line["step"] == 1 and line["lr"] == 0, "the first step must not move the weights"
    return line, out / "flux-lora-step00000001.safetensors", result


def comfyui_layout(kohya: dict[str, torch.Tensor], models) -> dict[str, torch.Tensor]:
    """ComfyUI's own naming of a Flux LoRA: diffusion_model.<BFL weight path>.lora_A/.lora_B/.alpha, the
    module found by ComfyUI's rule (lora_unet_ + the path with '.' -> '_')."""
    from safetensors import safe_open

    with safe_open(str(models / "flux1-dev.safetensors"), "pt") as f:
        paths = {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): k[:-len(".weight")]
                 for k in f.keys() if k.endswith(".weight")}
    suffix = {".lora_down.weight": ".lora_A.weight", ".lora_up.weight": ".lora_B.weight", ".alpha": ".alpha"}
    out = {}
    for key, value in kohya.items():
        module, part = key.split(".", 1)
        out["diffusion_model." + paths[module] + suffix["." + part]] = value
    return out


def test_kohya_file_continues_the_run(area, fluxtrain_bin, models, dataset, run_a):
    """The loss of run A's final weights evaluated in run B equals run A's end exactly (the same fp32 tensors,
    the same computation), and B's file is A's file (a step at lr 0 moves nothing)."""
    file, loss = run_a
    line, b_file, result = continued(area, fluxtrain_bin, models, dataset, "b-kohya", file, **A_NETWORK)
    print(f"\nkohya: A's end {loss!r}, B's first {line['validation_loss']!r}")
    assert "kohya layout" in result.stderr
    assert line["validation_loss"] == loss
    a, b = lora_tensors(file), lora_tensors(b_file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_comfyui_file_continues_the_run(area, fluxtrain_bin, models, dataset, run_a):
    file, loss = run_a
    comfy = area / "comfyui.safetensors"
    save_file(comfyui_layout(lora_tensors(file), models), str(comfy))
    line, b_file, result = continued(area, fluxtrain_bin, models, dataset, "b-comfyui", comfy, **A_NETWORK)
    print(f"\ncomfyui: A's end {loss!r}, B's first {line['validation_loss']!r}")
    assert "comfyui layout" in result.stderr
    assert line["validation_loss"] == loss
    a, b = lora_tensors(file), lora_tensors(b_file)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def peft_file(area, run_a_double):
    """Run A's file converted by diffusers (FluxLoraLoaderMixin.lora_state_dict: its kohya converter) into
    diffusers/PEFT keys (transformer.transformer_blocks.0.attn.to_q.lora_A.weight ...), alpha folded in."""
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    state = FluxLoraLoaderMixin.lora_state_dict(str(run_a_double[0]))
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in state)
    path = area / "peft.safetensors"
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))  # q, k, v share one down
    return path, state


@pytest.mark.parametrize("split_qkv", ["false", "true"])
def test_peft_file_continues_the_run(area, fluxtrain_bin, models, dataset, run_a_double, peft_file, split_qkv):
    """The diffusers/PEFT file (q, k, v as separate modules sharing one down matrix; no alpha, so scale 1 with
    the converter's scale folded into the matrices) loads into the unsplit network and into a split_qkv one;
    the loss equals run A's end within 1e-6 relative (the same product, rounded in another order)."""
    _, loss = run_a_double
    line, _, result = continued(area, fluxtrain_bin, models, dataset, f"b-peft-{split_qkv}", peft_file[0],
                                PARAMS_NETWORK_ALPHA=2, PARAMS_TRAIN_BLOCKS="double", PARAMS_SPLIT_QKV=split_qkv)
    rel = abs(line["validation_loss"] - loss) / abs(loss)
    print(f"\npeft split_qkv={split_qkv}: A's end {loss!r}, B's first {line['validation_loss']!r}, rel {rel:.1e}")
    assert "diffusers layout" in result.stderr
    assert rel <= 1e-6


def test_dim_from_weights_takes_the_modules_and_ranks(area, fluxtrain_bin, models, dataset, run_a):
    """dim_from_weights with another network_dim (8), alpha and block selection: the network is the file's
    (the same modules, each with its rank and alpha) and the run continues from it."""
    file, loss = run_a
    line, b_file, _ = continued(area, fluxtrain_bin, models, dataset, "b-dim", file, PARAMS_NETWORK_DIM=8,
                                PARAMS_NETWORK_ALPHA=8, PARAMS_DIM_FROM_WEIGHTS="true")
    a, b = lora_tensors(file), lora_tensors(b_file)
    assert a.keys() == b.keys()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert {a[k].shape[0] for k in a if k.endswith(".lora_down.weight")} == {2, 4}
    assert line["validation_loss"] == loss


def test_a_mismatched_file_is_a_named_error(area, fluxtrain_bin, models, dataset, run_a):
    """Another rank without dim_from_weights: the error names the file, a module, the shapes found and
    expected, and the fixes; nothing is trained."""
    file, _ = run_a
    result = train(fluxtrain_bin, models, dataset, area / "b-mismatch", check=False, PARAMS_NETWORK_WEIGHTS=file,
                   PARAMS_NETWORK_DIM=8, PARAMS_TRAIN_SINGLE_BLOCK_INDICES="0")
    assert result.returncode != 0
    err = result.stderr
    assert str(file) in err and "does not fit the LoRA network" in err, err
    assert "lora_unet_double_blocks_0_img_attn_qkv: down [4, " in err and "expected down [8, " in err, err
    assert "dim_from_weights" in err and "network_dim" in err, err


def test_peft_parts_with_their_own_downs_need_split_qkv(area, fluxtrain_bin, models, dataset, peft_file):
    """A diffusers file whose q, k, v have different down matrices (as diffusers trains them) cannot go into one
    unsplit module: a named error asking for split_qkv."""
    state = dict(peft_file[1])
    key = next(k for k in state if k.endswith("attn.to_k.lora_A.weight"))
    state[key] = state[key] + 0.01
    path = area / "peft-own-downs.safetensors"
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    result = train(fluxtrain_bin, models, dataset, area / "b-own-downs", check=False, PARAMS_NETWORK_WEIGHTS=path,
                   PARAMS_TRAIN_BLOCKS="double")
    assert result.returncode != 0
    assert str(path) in result.stderr and "split_qkv = true" in result.stderr, result.stderr
    assert "double_blocks.0.img_attn.qkv" in result.stderr, result.stderr
