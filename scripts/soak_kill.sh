#!/usr/bin/env bash
# The kill -9 soak of issue 18 (docs/training.md, "Killed at any moment"): N trials of tests/e2e/kill_trials.py
# (SIGKILL at a random moment or while a state is being written, then restart) on a tiny model set, run to
# the end after every 50 kills and compared byte for byte with an uninterrupted run's LoRA.
#
# Usage: scripts/soak_kill.sh N [FLUXTRAIN]   (default: build/fluxtrain of this checkout)
# Prints one line per trial and a summary; exit status 1 when any trial failed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
trials="${1:?usage: scripts/soak_kill.sh N [FLUXTRAIN]}"
fluxtrain="${2:-$here/build/fluxtrain}"
[ -x "$fluxtrain" ] || { echo "soak_kill.sh: $fluxtrain is not an executable; run make build first" >&2; exit 2; }
# shellcheck disable=SC1091
source "$here/build/setup.env"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PYTHONPATH="$here/tests:$here/tests/e2e" "$VENV/bin/python" - "$fluxtrain" "$trials" "$work" <<'PY'
import random
import subprocess
import sys
import time
from pathlib import Path

from kill_trials import KILL_PARAMS, run_trials
from train_env import base_env, write_dataset

fluxtrain, trials, work = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
models = work / "models"
subprocess.run([fluxtrain, "make-tiny", "--out", models, "--seed", "3"], check=True, capture_output=True)
data = write_dataset(work / "data")  # the images of tests/e2e/train_env.py


def env(out):
    return base_env(models, data, out, **KILL_PARAMS)  # the settings of tests/e2e/test_kill.py


straight = work / "straight"
subprocess.run([fluxtrain, "train"], env=env(straight), check=True, capture_output=True)
expected = (straight / "flux-lora.safetensors").read_bytes()
seed = random.randrange(10**6)
print(f"seed {seed}", flush=True)
totals = {"trials": 0, "mid_save": 0, "resumes": 0, "runs": 0, "failures": []}
started = time.time()
while totals["trials"] < trials:
    out = work / f"run-{totals['runs']}"
    report = run_trials(fluxtrain, env(out), out, trials=min(50, trials - totals["trials"]), seed=seed + totals["runs"],
                        log=lambda line: print(f"[run {totals['runs']}] {line}", flush=True))
    if (out / "flux-lora.safetensors").read_bytes() != expected:
        report.failures.append(f"run {totals['runs']}: the final LoRA differs from the straight run's")
    totals["trials"] += report.trials
    totals["mid_save"] += report.kills_mid_save
    totals["resumes"] += report.resumes
    totals["failures"] += report.failures
    totals["runs"] += 1
    for f in report.failures:
        print("FAILURE:", f, flush=True)
print(f"soak_kill: {totals['trials']} kills ({totals['mid_save']} while a state was being written), "
      f"{totals['resumes']} resumes, {totals['runs']} runs finished and compared, {len(totals['failures'])} failures, "
      f"{time.time() - started:.0f} s (seed {seed})")
sys.exit(1 if totals["failures"] else 0)
PY
