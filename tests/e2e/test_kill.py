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
    killed = tmp_path / "killed"
    report = run_trials(fluxtrain_bin, base_env(models, dataset, killed, **KILL_PARAMS), killed, trials=8, seed=seed)
    assert not report.failures, f"seed {seed}:\n" + "\n".join(report.failures)
    assert report.trials >= 8, f"seed {seed}: the run finished after {report.trials} kills"
    assert report.kills_mid_save >= 1, f"seed {seed}: no kill landed while a state was being written"
    assert report.resumes >= 1, f"seed {seed}: no restart found a state to resume from"
    assert (killed / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes(), \
        f"seed {seed}: the killed-and-restarted run's LoRA differs from the straight run's"
