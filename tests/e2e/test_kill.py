"""kill -9 at random moments with the default settings (issue 18): states on the timer only, no LoRA cadence.
At least 8 trials (every third one the moment a state is being written); after each kill no incomplete file
is where a complete one is expected, every restart resumes from the newest state once one exists, and the
finished run's LoRA is byte-identical to an uninterrupted run's. The long soak: scripts/soak_kill.sh N."""
from __future__ import annotations

import random

from conftest import run
from kill_trials import KILL_PARAMS, run_trials
from train_env import base_env, dataset, models  # noqa: F401 (fixtures)


def test_sigkill_at_random_moments_then_restart(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    straight = tmp_path / "straight"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, straight, **KILL_PARAMS))

    seed = random.randrange(10**6)
    print(f"kill schedule seed: {seed}")
    expected = (straight / "flux-lora.safetensors").read_bytes()
    kills = mid_save = resumes = 0
    # On a fast machine a run can finish before 8 kills: the next run starts in a fresh folder (as the soak does).
    for attempt in range(6):
        killed = tmp_path / f"killed-{attempt}"
        report = run_trials(fluxtrain_bin, base_env(models, dataset, killed, **KILL_PARAMS), killed,
                            trials=8 - kills, seed=seed + attempt)
        assert not report.failures, f"seed {seed}, run {attempt}:\n" + "\n".join(report.failures)
        assert (killed / "flux-lora.safetensors").read_bytes() == expected, \
            f"seed {seed}, run {attempt}: the killed-and-restarted run's LoRA differs from the straight run's"
        kills, mid_save, resumes = kills + report.trials, mid_save + report.kills_mid_save, resumes + report.resumes
        if kills >= 8:
            break
    assert kills >= 8, f"seed {seed}: only {kills} kills in 6 runs"
    assert mid_save >= 1, f"seed {seed}: no kill landed while a state was being written"
    assert resumes >= 1, f"seed {seed}: no restart found a state to resume from"
