"""A restarted pod carries on whatever happened to the newest state (issue 18): a state cut short, with a
flipped byte or with a broken state.json is reported by name and the next older one resumes, reaching the
straight run's LoRA; what a killed process left half-written is removed at start; a second trainer on the
same OUTPUT_PATH is refused, naming the holder's pid."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from conftest import run
from train_env import base_env, dataset, models  # noqa: F401 (fixtures)

KEEP_ALL = {"PARAMS_KEEP_LAST_N_STATES": "10"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fluxtrain_bin, models, dataset):  # noqa: F811
    out = tmp_path_factory.mktemp("straight") / "run"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **KEEP_ALL))
    assert sorted(p.name for p in (out / "state").iterdir()) == [f"step-{n:08d}" for n in (2, 4, 6, 8)]
    return out


def stopped_at_step_4(straight, out):
    """The straight run's folder as a pod killed after the state of step 4 would have left it."""
    shutil.copytree(straight, out, ignore=shutil.ignore_patterns("flux-lora.safetensors", "*step00000006*",
                                                                 "*step00000008*", "step-00000006", "step-00000008"))
    return out / "state" / "step-00000004"


def cut(state):
    path = state / "trainable.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-1])


def flip(state):
    path = state / "optimizer.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # a data byte (the header is at the start)
    path.write_bytes(bytes(data))


def broken_json(state):
    (state / "state.json").write_text("{")


@pytest.mark.parametrize("damage", [cut, flip, broken_json], ids=["cut_by_one_byte", "flipped_data_byte", "state_json_brace"])
def test_a_damaged_newest_state_falls_back_to_the_older_one(tmp_path, fluxtrain_bin, models, dataset, straight,  # noqa: F811
                                                            damage):
    out = tmp_path / "run"
    newest = stopped_at_step_4(straight, out)
    damage(newest)
    # Left by a killed process: a temporary state folder and an atomic write's temporary file.
    dead_pid = 4_000_000
    while True:
        try:
            os.kill(dead_pid, 0)
            dead_pid += 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead_pid += 1
    (out / "state" / f".step-00000005.tmp-{dead_pid}").mkdir()
    (out / f".flux-lora-step00000006.safetensors.tmp-{dead_pid}-0").write_bytes(b"half")

    result = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **KEEP_ALL))
    assert "step-00000004 is corrupt" in result.stderr, result.stderr
    assert "resumed from" in result.stderr and "step-00000002" in result.stderr.split("resumed from")[1].splitlines()[0]
    assert not list(out.glob("run-*")), "a damaged state must not start a new run"
    assert (out / "state" / "step-00000004.corrupt").is_dir()
    assert not (out / "state" / f".step-00000005.tmp-{dead_pid}").exists()
    assert not (out / f".flux-lora-step00000006.safetensors.tmp-{dead_pid}-0").exists()
    assert (out / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()


def test_an_explicit_damaged_state_is_a_named_error(tmp_path, fluxtrain_bin, models, dataset, straight):  # noqa: F811
    out = tmp_path / "run"
    newest = stopped_at_step_4(straight, out)
    cut(newest)
    result = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_RESUME_FROM=newest, **KEEP_ALL),
                 check=False)
    assert result.returncode == 1, result.stderr
    assert "step-00000004: not a sound training state: trainable.safetensors has" in result.stderr, result.stderr


def test_a_second_trainer_on_the_same_output_is_refused(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    out = tmp_path / "run"
    env = base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS="400")
    first = subprocess.Popen([fluxtrain_bin, "train"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / ".fluxtrain.lock"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read().decode()
        second = run([fluxtrain_bin, "train"], env=env, check=False)
        assert first.poll() is None, "the first trainer ended before the second started; the check proved nothing"
        assert second.returncode == 1, second.stderr
        assert f"is in use by another fluxtrain (pid {first.pid})" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()
    # A kill -9 leaves the lock file but not the lock: the next command on the folder takes it (`cache`
    # locks the folder as `train` does, and is quick).
    again = run([fluxtrain_bin, "cache"], env=env, check=False)
    assert again.returncode == 0 and "in use by another" not in again.stderr, again.stderr


def test_states_on_a_timer_whatever_the_lora_cadence(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    """save_state_every_minutes (fractions allowed): with no LoRA cadence at all, a state after every step
    once the (tiny) interval has passed; with 0, only the final state."""
    out = tmp_path / "timer"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_SAVE_EVERY_N_STEPS="0",
                                               PARAMS_SAVE_STATE_EVERY_MINUTES="0.00001", **KEEP_ALL))
    assert sorted(p.name for p in (out / "state").iterdir()) == [f"step-{n:08d}" for n in range(1, 9)]
    assert not list(out.glob("flux-lora-step*")), "a timer state writes no LoRA file"
    off = tmp_path / "off"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, off, PARAMS_SAVE_EVERY_N_STEPS="0",
                                               PARAMS_SAVE_STATE_EVERY_MINUTES="0", **KEEP_ALL))
    assert sorted(p.name for p in (off / "state").iterdir()) == ["step-00000008"]


def test_the_dataset_is_part_of_the_run_identity(tmp_path, fluxtrain_bin, models, dataset, straight):  # noqa: F811
    """The same images and captions in another folder resume; one caption changed starts a new run in
    run-<hash> and leaves the old run as it was."""
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)
    out = tmp_path / "same"
    stopped_at_step_4(straight, out)
    result = run([fluxtrain_bin, "train"], env=base_env(models, moved, out, **KEEP_ALL))
    assert "resumed from" in result.stderr and not list(out.glob("run-*")), result.stderr
    assert (out / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()

    edited = tmp_path / "edited"
    shutil.copytree(dataset, edited)
    (edited / "2_ohwx" / "img3.txt").write_text("ohwx, a blue circle\n")
    out = tmp_path / "other"
    stopped_at_step_4(straight, out)
    result = run([fluxtrain_bin, "train"], env=base_env(models, edited, out, **KEEP_ALL))
    assert "the dataset (its images, sizes or captions)" in result.stderr, result.stderr
    assert "resumed from" not in result.stderr
    runs = list(out.glob("run-*"))
    assert len(runs) == 1 and (runs[0] / "flux-lora.safetensors").exists()
    assert not (out / "flux-lora.safetensors").exists(), "the old run must stay as it was"


def poison(cache, fraction):
    """Multiplies the latents of `fraction` of the cached images by NaN (a poisoned cache entry)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    entries = sorted((cache / "latents").glob("*.safetensors"))
    assert entries, f"no latent cache entries under {cache}"
    chosen = entries[: max(1, int(len(entries) * fraction))]
    for path in chosen:
        with safe_open(str(path), "pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        tensors["latents"] = tensors["latents"] * float("nan")
        save_file(tensors, str(path), metadata=meta)
    return len(chosen), len(entries)


def test_non_finite_steps_are_skipped_and_counted_then_stop_the_run(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    import json

    import torch
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    out = tmp_path / "some"
    env = base_env(models, dataset, out, PARAMS_CACHE_DIR=cache)
    run([fluxtrain_bin, "cache"], env=env)
    poisoned, total = poison(cache, 0.5)
    assert 0 < poisoned < total
    result = run([fluxtrain_bin, "train"], env=env)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [line["step"] for line in lines if line["skipped"] == 1]
    assert 0 < len(skipped) < 8, lines
    assert lines[-1]["skipped_steps"] == len(skipped)
    assert "the optimizer step is skipped" in result.stderr
    for name, tensor in load_file(str(out / "flux-lora.safetensors")).items():
        assert torch.isfinite(tensor.float()).all(), name

    out = tmp_path / "all"
    env = base_env(models, dataset, out, PARAMS_CACHE_DIR=cache, PARAMS_MAX_NONFINITE_STEPS="3")
    poison(cache, 1.0)
    result = run([fluxtrain_bin, "train"], env=env, check=False)
    assert result.returncode == 1, result.stderr
    assert "training stopped at step 3: the loss or gradient norm was not finite" in result.stderr, result.stderr
    assert "max_nonfinite_steps 3" in result.stderr
    assert not (out / "flux-lora.safetensors").exists()
    for state in (out / "state").glob("step-*"):
        for name, tensor in load_file(str(state / "trainable.safetensors")).items():
            assert torch.isfinite(tensor.float()).all(), (state, name)
