"""Each documented train option that shapes a run, shown to have its effect through `fluxtrain train` and the
seed's environment variables, on the tiny model set of train_env.py: the LoRA it starts from
(network_weights), LoRA+ (loraplus_lr_ratio), gradient clipping (max_grad_norm), the saved dtype
(save_precision), the per-type ranks (img_attn_dim ... single_mod_dim), the block selections, the loss
(loss_type, huber_c), the dataset's alpha_mask, samples before the first step (sample_at_first) and
auto_resume. Most runs are one optimizer step on one 64x64 image; each check states its tolerance."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from conftest import run
from train_env import base_env, dataset, lora_tensors, metrics, models  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    """One folder for every run of this module: they share its latent and text caches."""
    return tmp_path_factory.mktemp("runs")


def train(fluxtrain_bin, models, dataset, out, **params):
    """One optimizer step (unless params say otherwise), no intermediate saves."""
    params = {"PARAMS_MAX_TRAIN_STEPS": 1, "PARAMS_SAVE_EVERY_N_STEPS": 0, **params}
    return run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **params))


def module_ranks(path) -> dict[str, int]:
    with safe_open(str(path), "pt") as f:
        return {k[:-len(".lora_down.weight")]: f.get_slice(k).get_shape()[0]
                for k in f.keys() if k.endswith(".lora_down.weight")}


def block_linears(models) -> dict[str, str]:
    """Every Linear inside the transformer's blocks, as kohya's module name -> kohya's layer type."""
    out = {}
    with safe_open(str(models / "flux1-dev.safetensors"), "pt") as f:
        for key in f.keys():
            if not key.endswith(".weight") or len(f.get_slice(key).get_shape()) != 2:
                continue
            parts = key.split(".")
            if parts[0] == "double_blocks":
                kind = parts[2]  # img_attn, img_mlp, img_mod, txt_attn, txt_mlp, txt_mod
            elif parts[0] == "single_blocks":
                kind = "single_mod" if parts[2] == "modulation" else "single"
            else:
                continue
            out["lora_unet_" + key[:-len(".weight")].replace(".", "_")] = kind
    return out


# --- network_weights, LoRA+ and max_grad_norm: one step from a known LoRA, saved in fp32 -------------------

@pytest.fixture(scope="module")
def start_lora(area, fluxtrain_bin, models, dataset):
    """A LoRA with non-zero up matrices (2 AdamW steps at lr 1e-2, another seed), saved in fp32."""
    out = area / "start"
    train(fluxtrain_bin, models, dataset, out, PARAMS_SEED=8, PARAMS_LEARNING_RATE=0.01, PARAMS_MAX_TRAIN_STEPS=2,
          PARAMS_SAVE_PRECISION="fp32")
    return out / "flux-lora.safetensors"


LR = 1e-3


def adamw_step_from(area, fluxtrain_bin, models, dataset, start_lora, name, **params):
    out = area / name
    train(fluxtrain_bin, models, dataset, out, PARAMS_NETWORK_WEIGHTS=start_lora, PARAMS_LEARNING_RATE=LR,
          PARAMS_LEARNING_SCHEDULER="constant", PARAMS_WEIGHT_DECAY=0, PARAMS_SAVE_PRECISION="fp32", **params)
    before, after = lora_tensors(start_lora), lora_tensors(out / "flux-lora.safetensors")
    assert before.keys() == after.keys()
    return {k: (after[k].double() - before[k].double()).abs() for k in before}


@pytest.fixture(scope="module")
def adamw_step(area, fluxtrain_bin, models, dataset, start_lora):
    return adamw_step_from(area, fluxtrain_bin, models, dataset, start_lora, "adamw")


def test_network_weights_is_where_training_starts(adamw_step):
    """AdamW's first step moves every weight by lr * |g| / (|g| + eps) <= lr (no weight decay): a run started
    from a LoRA file ends within lr of the file's tensors in every entry (alphas unchanged), and its largest
    moves are lr (relative 1e-3: the entry with the largest gradient, eps 1e-8, fp32 rounding ~1e-5). A fresh
    LoRA (another seed's random down matrices, zero up matrices) would be far outside that."""
    for key, delta in adamw_step.items():
        if key.endswith(".alpha"):
            assert delta.max() == 0, key
            continue
        assert delta.max() <= LR * (1 + 1e-3), key
        assert delta.max() >= LR * (1 - 1e-3), key


def test_loraplus_lr_ratio_speeds_up_the_up_matrices(area, fluxtrain_bin, models, dataset, start_lora, adamw_step):
    """LoRA+ (kohya loraplus_lr_ratio): with AdamW the first step moves each entry by lr * |g| / (|g| + eps), so
    the largest move of every up matrix is ratio * lr and of every down matrix lr (relative 1e-3, as above);
    without the option both are lr."""
    ratio = 4.0
    plus = adamw_step_from(area, fluxtrain_bin, models, dataset, start_lora, "loraplus",
                           PARAMS_LORAPLUS_LR_RATIO=ratio)
    for key in plus:
        if key.endswith(".alpha"):
            continue
        expected = ratio * LR if key.endswith(".lora_up.weight") else LR
        assert plus[key].max() == pytest.approx(expected, rel=1e-3), key
        assert adamw_step[key].max() == pytest.approx(LR, rel=1e-3), key


def test_max_grad_norm_clips_the_step(area, fluxtrain_bin, models, dataset, start_lora):
    """SGD (no momentum, no weight decay) moves the weights by lr * g: unclipped (max_grad_norm 0) the step's
    norm is lr times the logged gradient norm; with max_grad_norm a quarter of that, the logged norm (before
    clipping) is the same and the step's norm is lr * max_grad_norm (torch's clip_grad_norm_: a factor
    max / (norm + 1e-6)). Relative 1e-4: fp32 weights of magnitude ~0.1 moved by ~1e-3."""
    lr = 0.1

    def sgd_step(name, clip):
        out = area / name
        train(fluxtrain_bin, models, dataset, out, PARAMS_NETWORK_WEIGHTS=start_lora, PARAMS_OPTIMIZER_TYPE="SGD",
              PARAMS_LEARNING_RATE=lr, PARAMS_LEARNING_SCHEDULER="constant", PARAMS_SAVE_PRECISION="fp32",
              PARAMS_MAX_GRAD_NORM=clip)
        before, after = lora_tensors(start_lora), lora_tensors(out / "flux-lora.safetensors")
        step = torch.cat([(after[k].double() - before[k].double()).flatten() for k in before])
        return step.norm().item(), metrics(out)[0]["grad_norm"]

    free_norm, grad_norm = sgd_step("sgd-unclipped", 0)
    assert free_norm == pytest.approx(lr * grad_norm, rel=1e-4)
    limit = grad_norm / 4
    clipped_norm, logged = sgd_step("sgd-clipped", limit)
    assert logged == pytest.approx(grad_norm, rel=1e-6)
    assert clipped_norm == pytest.approx(lr * limit * grad_norm / (grad_norm + 1e-6), rel=1e-4)


# --- what the file holds: dtypes, ranks, blocks --------------------------------------------------------------

@pytest.fixture(scope="module")
def ranks_run(area, fluxtrain_bin, models, dataset):
    out = area / "ranks"
    train(fluxtrain_bin, models, dataset, out, PARAMS_IMG_ATTN_DIM=2, PARAMS_IMG_MLP_DIM=3, PARAMS_IMG_MOD_DIM=0,
          PARAMS_TXT_ATTN_DIM=1, PARAMS_TXT_MLP_DIM=0, PARAMS_TXT_MOD_DIM=5, PARAMS_SINGLE_DIM=6,
          PARAMS_SINGLE_MOD_DIM=0, PARAMS_SAVE_PRECISION="fp16")
    return out / "flux-lora.safetensors"


@pytest.fixture(scope="module")
def blocks_run(area, fluxtrain_bin, models, dataset):
    out = area / "blocks"
    train(fluxtrain_bin, models, dataset, out, PARAMS_TRAIN_DOUBLE_BLOCK_INDICES="1",
          PARAMS_TRAIN_SINGLE_BLOCK_INDICES="0,2")
    return out / "flux-lora.safetensors"


def test_per_type_ranks_set_each_modules_rank_and_0_removes_it(models, ranks_run):
    """img_attn_dim ... single_mod_dim: every block Linear of a type with a rank has a module of that rank
    (network_dim 4 is overridden everywhere here), the types with 0 have none. Exact."""
    ranks = {"img_attn": 2, "img_mlp": 3, "img_mod": 0, "txt_attn": 1, "txt_mlp": 0, "txt_mod": 5, "single": 6,
             "single_mod": 0}
    expected = {name: ranks[kind] for name, kind in block_linears(models).items() if ranks[kind] > 0}
    assert module_ranks(ranks_run) == expected
    with safe_open(str(ranks_run), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"


def test_block_indices_select_the_blocks_with_modules(models, blocks_run):
    """train_double_block_indices "1" and train_single_block_indices "0,2": exactly the Linears of double
    block 1 and single blocks 0 and 2 have modules, each of network_dim 4."""
    chosen = ("lora_unet_double_blocks_1_", "lora_unet_single_blocks_0_", "lora_unet_single_blocks_2_")
    expected = {name: 4 for name in block_linears(models) if name.startswith(chosen)}
    assert len(expected) > 10
    assert module_ranks(blocks_run) == expected


def test_save_precision_sets_the_dtype_of_every_tensor(start_lora, ranks_run, blocks_run):
    """save_precision fp32 (start_lora), fp16 (ranks_run) and the default bf16 (blocks_run): the dtype of every
    tensor the file holds, alphas included."""
    for path, dtype in ((start_lora, torch.float32), (ranks_run, torch.float16), (blocks_run, torch.bfloat16)):
        tensors = lora_tensors(path)
        assert tensors and {t.dtype for t in tensors.values()} == {dtype}, path


# --- the loss ------------------------------------------------------------------------------------------------

def test_loss_type_and_huber_c_reach_the_loss(area, fluxtrain_bin, models, dataset):
    """The first step's prediction and target do not depend on the loss (same seed, zero up matrices), so the
    logged first losses of l1, smooth_l1 and huber obey kohya's formulas: smooth_l1 = 2 (sqrt(d^2 + c^2) - c)
    lies within 2c of 2 |d| (c = 1e-4: relative 1e-3 of 2 * l1, the |d| being O(1)), and huber = c * smooth_l1
    element by element (relative 1e-5, fp32)."""
    c = 1e-4
    first = {}
    for name, params in {"l1": {"PARAMS_LOSS_TYPE": "l1"},
                         "smooth_l1": {"PARAMS_LOSS_TYPE": "smooth_l1", "PARAMS_HUBER_C": c},
                         "huber": {"PARAMS_LOSS_TYPE": "huber", "PARAMS_HUBER_C": c}}.items():
        out = area / f"loss-{name}"
        train(fluxtrain_bin, models, dataset, out, **params)
        first[name] = metrics(out)[0]["loss"]
    assert first["smooth_l1"] == pytest.approx(2 * first["l1"], rel=1e-3)
    assert first["huber"] == pytest.approx(c * first["smooth_l1"], rel=1e-5)


def test_alpha_mask_weights_the_loss_with_kohyas_area_resized_alpha(area, tmp_path, fluxtrain_bin, models):
    """alpha_mask (a subset key of the dataset config): the latent cache entry holds the loss weight of each
    latent pixel, which must be kohya's mask (library/custom_train_functions.py apply_masked_loss: alpha / 255
    resized to the latent size with torch.nn.functional.interpolate(mode="area")), to 1e-6 (fp32 means of 64
    values). How the weight enters the loss is tested in tests/unit/test_objective.cpp and
    tests/parity/test_objective.py. Without alpha_mask the entry has no mask."""
    images = tmp_path / "rgba"
    images.mkdir()
    alpha = torch.zeros(64, 64, dtype=torch.uint8)
    alpha[8:40, 4:60] = 255
    alpha[40:, :] = torch.arange(64, dtype=torch.uint8).mul(4)  # a gradient, not aligned to the 8x8 patches
    alpha[20:28, 30:35] = 77
    rgba = torch.stack([torch.full((64, 64), 200, dtype=torch.uint8), torch.zeros(64, 64, dtype=torch.uint8),
                        torch.full((64, 64), 90, dtype=torch.uint8), alpha], dim=-1)
    Image.fromarray(rgba.numpy(), "RGBA").save(images / "a.png")
    (images / "a.txt").write_text("ohwx\n")
    for flag in ("true", "false"):
        config = tmp_path / f"dataset-{flag}.toml"
        config.write_text(f"[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\n"
                          f"image_dir = \"{images}\"\ncaption_extension = \".txt\"\nalpha_mask = {flag}\n")
        cache = tmp_path / f"cache-{flag}"
        env = base_env(models, images, tmp_path / f"run-{flag}", DATASET_CONFIG=config, PARAMS_CACHE_DIR=cache)
        del env["DATASET_NAME"]
        run([fluxtrain_bin, "cache"], env=env)
        (entry,) = (cache / "latents").iterdir()
        tensors = lora_tensors(entry)
        if flag == "false":
            assert "mask" not in tensors
            continue
        expected = F.interpolate(alpha.float().div(255)[None, None], size=(8, 8), mode="area")[0, 0]
        torch.testing.assert_close(tensors["mask"], expected, rtol=0, atol=1e-6)


# --- samples before the first step, and auto_resume ----------------------------------------------------------

@pytest.fixture(scope="module")
def prompts(area):
    path = area / "prompts.txt"
    path.write_text("ohwx, a red square --w 32 --h 32 --s 2 --d 1\n")
    return path


def test_sample_at_first_renders_the_prompts_at_step_0(area, fluxtrain_bin, models, dataset, prompts):
    """With sample_at_first the prompt is rendered before the first step (step 0 in the name); without it the
    same one-step run with the same prompts renders none (no sample cadence is set)."""
    out = area / "sample-at-first"
    train(fluxtrain_bin, models, dataset, out, SAMPLE_PROMPTS=prompts, PARAMS_SAMPLE_AT_FIRST="true")
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["flux-lora_000000_00_1.png"]
    out = area / "no-sample-at-first"
    train(fluxtrain_bin, models, dataset, out, SAMPLE_PROMPTS=prompts)
    assert not list(out.glob("samples/*.png"))


def test_auto_resume_picks_the_newest_state_and_false_starts_over(area, fluxtrain_bin, models, dataset):
    """A 4-step run keeping every state (1 to 4). A folder holding copies of its states 1 and 2: by default
    (auto_resume on) the run resumes from the newer one, step 2, logs steps 3 and 4 only and ends byte-identical
    to the uninterrupted run; with PARAMS_AUTO_RESUME=false the same folder is ignored: steps 1 to 4 are logged
    and the LoRA is again the uninterrupted run's (the training is deterministic)."""
    params = {"PARAMS_MAX_TRAIN_STEPS": 4, "PARAMS_SAVE_EVERY_N_STEPS": 1, "PARAMS_KEEP_LAST_N_STATES": 4}
    straight = area / "resume-straight"
    train(fluxtrain_bin, models, dataset, straight, **params)
    final = (straight / "flux-lora.safetensors").read_bytes()
    for auto, logged in (("true", [3, 4]), ("false", [1, 2, 3, 4])):
        out = area / f"resume-{auto}"
        for step in ("step-00000001", "step-00000002"):
            shutil.copytree(straight / "state" / step, out / "state" / step)
        result = train(fluxtrain_bin, models, dataset, out, PARAMS_AUTO_RESUME=auto, **params)
        resumed = f"resumed from {out / 'state' / 'step-00000002'} at step 2 of 4"
        assert (resumed in result.stderr) == (auto == "true"), result.stderr
        assert [line["step"] for line in metrics(out)] == logged
        assert (out / "flux-lora.safetensors").read_bytes() == final
