"""`fluxtrain plan` and the planner's automatic choices in `fluxtrain train` (issue 20): the seed's table for
Flux.1 dev, the same batch from `--print-config` of batch_size = auto, kept products auto and block swap
auto writing the same LoRA bytes as the plain run, and the named out-of-memory error that keeps the last
state (the CPU's memory limit, FLUXTRAIN_CPU_MEMORY_LIMIT_MB, plays the GPU's memory)."""
from __future__ import annotations

import json
import os
import re

from conftest import run
from train_env import base_env, dataset, models  # noqa: F401  (fixtures)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMS_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def flux_dev_plan(fluxtrain_bin, tmp_path, vram):
    out = tmp_path / f"plan-{vram}.json"
    result = run([fluxtrain_bin, "plan", "--model-dir", tmp_path / "no-models", "--resolution", "1280,768",
                  "--vram", vram, "--device", "cuda", "--batches", "1,2,4,8,16,32,48,60,64", "--json", out],
                 env=clean_env(), check=False)
    return result, out


def test_flux_dev_table_and_print_config_agree(tmp_path, fluxtrain_bin):
    (tmp_path / "no-models").mkdir()  # an empty model folder: the files are not downloaded yet
    for vram in ("80", "192"):
        # The table needs no GPU and no weights: Flux.1 dev's shape stands in for the missing files, and a
        # plan for CUDA with a given vram is made on a machine without one.
        result, out = flux_dev_plan(fluxtrain_bin, tmp_path, vram)
        assert result.returncode == 0, result.stderr
        device = "cuda"
        plan = json.loads(out.read_text())
        rows = {r["batch"]: r["peak_bytes"] for r in plan["rows"]}
        assert {1, 2, 4, 8, 16, 32, 60, 64} <= set(rows)
        assert all(rows[a] < rows[b] for a, b in zip(sorted(rows), sorted(rows)[1:]))
        largest = plan["largest_batch"]
        budget = plan["budget_bytes"]
        assert budget == int(float(vram) * 1e9 * 0.95)
        assert largest >= 1 and rows.get(largest, 0) <= budget
        assert plan["fixed_bytes"] + (largest + 1) * plan["per_image_bytes"] > budget
        # --print-config of the train options (as `plan` resolves them: the models need not be there) with
        # batch_size auto and the same vram: the same batch.
        printed = run([fluxtrain_bin, "plan", "--print-config"],
                      env=clean_env(PARAMS_BATCH_SIZE="auto", PARAMS_VRAM=vram, PARAMS_RESOLUTION="1280,768",
                                    PARAMS_DEVICE=device, PARAMS_PRECISION="bf16", DATASET_NAME=tmp_path,
                                    MODEL_DIR=tmp_path / "no-models")).stdout
        m = re.search(r"batch_size auto: (\d+)", printed)
        assert m, printed
        assert int(m.group(1)) == largest, printed


def train(fluxtrain_bin, models, dataset, out, check=True, **params):
    params = {"PARAMS_SAVE_EVERY_N_STEPS": "0", "PARAMS_MAX_TRAIN_STEPS": "3", **params}
    env = base_env(models, dataset, out, **params)
    return run([fluxtrain_bin, "train"], env=env, check=check)


def planned_peaks(fluxtrain_bin, models, dataset, tmp_path, batch, **params):
    out = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}.json"
    env = base_env(models, dataset, tmp_path / "unused", **params)
    run([fluxtrain_bin, "plan", "--train-batch-size", batch, "--json", out, "--batches", "1,2"], env=env)
    return json.loads(out.read_text())


def test_kept_products_and_block_swap_auto_write_the_plain_runs_lora(tmp_path, fluxtrain_bin, models, dataset):
    plain = tmp_path / "plain"
    train(fluxtrain_bin, models, dataset, plain, PARAMS_CHECKPOINT_KEEP_PRODUCTS="outputs")
    # A budget between `outputs` and `all` everywhere: some blocks keep all, the others outputs.
    low = planned_peaks(fluxtrain_bin, models, dataset, tmp_path, "1", PARAMS_CHECKPOINT_KEEP_PRODUCTS="outputs")
    high = planned_peaks(fluxtrain_bin, models, dataset, tmp_path, "1", PARAMS_CHECKPOINT_KEEP_PRODUCTS="all")
    peak = {r["batch"]: r["peak_bytes"] for r in low["rows"]}[1], {r["batch"]: r["peak_bytes"] for r in high["rows"]}[1]
    assert peak[0] < peak[1]
    vram = (peak[0] + peak[1]) / 2 / 0.95 / 1e9
    auto = tmp_path / "auto"
    result = train(fluxtrain_bin, models, dataset, auto, PARAMS_CHECKPOINT_KEEP_PRODUCTS="auto", PARAMS_VRAM=f"{vram:.9f}",
                   PARAMS_BLOCKS_TO_SWAP="auto", PARAMS_TRAIN_BATCH_SIZE="1")
    m = re.search(r"checkpoint_keep_products auto: all in (\d+) blocks, outputs in (\d+)", result.stderr)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, result.stderr
    assert "blocks_to_swap auto: 0" in result.stderr, result.stderr
    assert (auto / "flux-lora.safetensors").read_bytes() == (plain / "flux-lora.safetensors").read_bytes()
    # Nothing fits without swapping: block swap auto swaps blocks, and the LoRA is still the same.
    weights = high["fixed_bytes"]
    tight = tmp_path / "tight"
    vram = (weights + (peak[0] - weights) * 0.9) / 0.95 / 1e9
    result = train(fluxtrain_bin, models, dataset, tight, PARAMS_CHECKPOINT_KEEP_PRODUCTS="outputs",
                   PARAMS_VRAM=f"{vram:.9f}", PARAMS_BLOCKS_TO_SWAP="auto", PARAMS_TRAIN_BATCH_SIZE="1")
    m = re.search(r"blocks_to_swap auto: (\d+) blocks swapped", result.stderr)
    assert m and int(m.group(1)) > 0, result.stderr
    assert (tight / "flux-lora.safetensors").read_bytes() == (plain / "flux-lora.safetensors").read_bytes()


def test_batch_size_auto_trains_with_the_planned_batch(tmp_path, fluxtrain_bin, models, dataset):
    plan = planned_peaks(fluxtrain_bin, models, dataset, tmp_path, "1")
    vram = (plan["fixed_bytes"] + 2.5 * plan["per_image_bytes"]) / 0.95 / 1e9
    result = train(fluxtrain_bin, models, dataset, tmp_path / "out", PARAMS_BATCH_SIZE="auto", PARAMS_VRAM=f"{vram:.9f}")
    assert "batch_size auto: 2 " in result.stderr, result.stderr


def test_out_of_memory_is_a_named_error_and_keeps_the_last_state(tmp_path, fluxtrain_bin, models, dataset):
    out = tmp_path / "out"
    train(fluxtrain_bin, models, dataset, out, PARAMS_MAX_TRAIN_STEPS="2", PARAMS_SAVE_EVERY_N_STEPS="2",
          PARAMS_TRAIN_BATCH_SIZE="2")
    states = sorted(p.name for p in (out / "state").iterdir())
    assert states
    plan = planned_peaks(fluxtrain_bin, models, dataset, tmp_path, "2")
    # A limit that holds the model, the LoRA and the optimizer state (the resume loads them) but not a step.
    limit_mb = int((plan["fixed_bytes"] + 0.5 * plan["per_image_bytes"]) / 2**20) + 1
    result = train(fluxtrain_bin, models, dataset, out, check=False, PARAMS_MAX_TRAIN_STEPS="4",
                   PARAMS_SAVE_EVERY_N_STEPS="2", PARAMS_TRAIN_BATCH_SIZE="2", FLUXTRAIN_CPU_MEMORY_LIMIT_MB=limit_mb)
    assert result.returncode != 0
    assert "out of memory on cpu in step 3 (2 images" in result.stderr, result.stderr
    assert "the memory planner predicted" in result.stderr
    assert "is kept; a restart resumes from it" in result.stderr
    assert "To fit: a smaller batch" in result.stderr and "blocks_to_swap" in result.stderr
    assert "terminate called" not in result.stderr
    assert sorted(p.name for p in (out / "state").iterdir()) == states
    # Without the limit the restart resumes from that state and finishes.
    done = train(fluxtrain_bin, models, dataset, out, PARAMS_MAX_TRAIN_STEPS="4", PARAMS_SAVE_EVERY_N_STEPS="2",
                 PARAMS_TRAIN_BATCH_SIZE="2")
    assert "resumed from" in done.stderr


def test_steps_per_epoch_eta_and_cost(tmp_path, fluxtrain_bin, models, dataset):
    out = tmp_path / "plan.json"
    env = base_env(models, dataset, tmp_path / "unused", PARAMS_TRAIN_BATCH_SIZE="2", PARAMS_MAX_EPOCHS="5")
    env.pop("PARAMS_MAX_TRAIN_STEPS", None)
    result = run([fluxtrain_bin, "plan", "--step-seconds", "1.5", "--price-per-hour", "2.4", "--json", out], env=env)
    plan = json.loads(out.read_text())
    # Six images with two repeats (the 2_ohwx folder) in two buckets of 64x64 and 96x64: 3 + 3 batches of 2.
    assert plan["steps_per_epoch"] == 6, result.stdout
    assert plan["total_steps"] == 30
    assert plan["eta_seconds"] == 45.0 and abs(plan["cost"] - 0.03) < 1e-9
    assert "ETA: 0 h 0 min for 30 steps at 1.5 s per step, cost 0.03" in result.stdout, result.stdout
