"""A full disk during a save (issue 18, item 7): the save's temporary files go, the newest complete state stays
(older ones are pruned only after a new one is complete), the error names the folder and the bytes needed,
and a restart with space again resumes and reaches the straight run's LoRA.

Two ways to fill the disk: the test hook FLUXTRAIN_TEST_FAIL_WRITE_AFTER_BYTES (core/atomic_file.h), which
makes the writes fail with ENOSPC part way through a file, past the free-space check; and, where the machine
lets a test mount one (root in a private mount namespace), a real small tmpfs, where the free-space check
before the save refuses it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run
from train_env import base_env, dataset, models  # noqa: F401 (fixtures)

KEEP_ALL = {"PARAMS_KEEP_LAST_N_STATES": "10"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fluxtrain_bin, models, dataset):  # noqa: F811
    out = tmp_path_factory.mktemp("straight") / "run"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **KEEP_ALL))
    return out


def size(path: Path) -> int:
    return path.stat().st_size


def state_bytes(state: Path) -> int:
    return sum(size(state / name) for name in ("trainable.safetensors", "optimizer.safetensors", "state.json",
                                               "COMPLETE"))


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("where", ["state", "lora"])
def test_enospc_during_a_save_keeps_the_newest_state_and_the_restart_resumes(tmp_path, fluxtrain_bin, models,  # noqa: F811
                                                                              dataset, straight, where):  # noqa: F811
    out = tmp_path / "run"
    env = base_env(models, dataset, out, **KEEP_ALL)
    run([fluxtrain_bin, "cache"], env=env)  # the caches first: the writes counted below are the run's own
    lora = size(straight / "flux-lora-step00000002.safetensors")
    state2 = straight / "state" / "step-00000002"
    before_step_4 = size(straight / "config.toml") + lora + state_bytes(state2)
    if where == "state":
        # The step-2 LoRA and state, the step-4 LoRA, the step-4 trainable tensors and half its optimizer.
        limit = before_step_4 + lora + size(state2 / "trainable.safetensors") + size(state2 / "optimizer.safetensors") // 2
    else:
        limit = before_step_4 + lora // 2  # half way through the step-4 LoRA file
    result = run([fluxtrain_bin, "train"], env={**env, "FLUXTRAIN_TEST_FAIL_WRITE_AFTER_BYTES": str(limit)},
                 check=False)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "no space left on the device in" in error, error
    if where == "state":
        assert f"cannot save the training state {out / 'state' / 'step-00000004'} (it needs about" in error, error
        assert f"bytes in {out / 'state'})" in error, error
    else:
        assert f"cannot write {out / 'flux-lora-step00000004.safetensors'}" in error, error
        assert f"in {out} (the file needs {lora:,} bytes" in error, error
    assert f"the newest complete state, {out / 'state' / 'step-00000002'}, is kept" in error, error
    assert temporaries(out) == [], "a failed save must leave no temporary file or folder"
    assert sorted(p.name for p in (out / "state").iterdir()) == ["step-00000002"]
    assert not (out / "flux-lora.safetensors").exists()

    # Space again: the run resumes from the kept state (it verifies: no "corrupt") and ends as the straight one.
    again = run([fluxtrain_bin, "train"], env=env)
    assert f"resumed from {out / 'state' / 'step-00000002'} at step 2 of 8" in again.stderr, again.stderr
    assert "corrupt" not in again.stderr
    assert (out / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()


def mount_allowed(tmp_path: Path) -> str:
    """'' when this process may mount a tmpfs in a private mount namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare program"
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"],
                            capture_output=True, text=True)
    return "" if result.returncode == 0 else f"mounting a tmpfs is not permitted here ({result.stderr.strip()})"


def test_a_nearly_full_tmpfs_is_refused_before_the_save_and_the_restart_resumes(tmp_path, fluxtrain_bin, models,  # noqa: F811
                                                                               dataset, straight):  # noqa: F811
    why = mount_allowed(tmp_path)
    if why:
        pytest.skip(why)
    mount = tmp_path / "small"
    mount.mkdir()
    out = mount / "run"
    # The run as a pod stopped after the state of step 4 left it, on a disk with room for the step-6 LoRA
    # and half a megabyte more: too little for the state (its tensors and 1 MiB of room).
    seed = tmp_path / "seed"
    shutil.copytree(straight, seed, ignore=shutil.ignore_patterns("flux-lora.safetensors", "*step00000006*",
                                                                  "*step00000008*", "step-00000006", "step-00000008"))
    state4 = seed / "state" / "step-00000004"
    room = size(seed / "flux-lora-step00000004.safetensors") + size(state4 / "trainable.safetensors") + \
        size(state4 / "optimizer.safetensors") + 512 * 1024
    env = base_env(models, dataset, out, PARAMS_CACHE_DIR=tmp_path / "cache", **KEEP_ALL)  # the cache off the tmpfs
    run([fluxtrain_bin, "cache"], env={**env, "OUTPUT_PATH": str(tmp_path / "cache-run")})
    copy = tmp_path / "after"
    script = f"""set -u
mount -t tmpfs -o size=64m tmpfs {mount}
cp -a {seed} {out}
avail=$(df -B1 --output=avail {mount} | tail -1)
head -c $((avail - {room})) /dev/zero > {mount}/filler
{fluxtrain_bin} train > {tmp_path}/stdout 2> {tmp_path}/stderr
echo $? > {tmp_path}/rc
cp -a {out} {copy}
"""
    subprocess.run(["unshare", "-m", "bash", "-c", script], env=env, check=True, timeout=600)
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", stderr
    error = stderr.strip().splitlines()[-1]
    assert f"not enough free space in {out / 'state'} to save the training state of step 6: it needs" in error, error
    assert f"the newest complete state, {out / 'state' / 'step-00000004'}, is kept" in error, error
    assert (copy / "flux-lora-step00000006.safetensors").exists(), "the LoRA of step 6 fitted"
    assert sorted(p.name for p in (copy / "state").iterdir()) == ["step-00000002", "step-00000004"]
    assert temporaries(copy) == []

    # On a disk with space: the copy resumes from step 4 and ends as the straight run.
    again = run([fluxtrain_bin, "train"], env=base_env(models, dataset, copy, **KEEP_ALL))
    assert f"resumed from {copy / 'state' / 'step-00000004'} at step 4 of 8" in again.stderr, again.stderr
    assert (copy / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()
