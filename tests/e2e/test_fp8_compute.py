"""fp8_compute (issue 20, item 4): how an fp8 base's weights multiply, decided once at the start of
`fluxtrain train` against the device. On this machine's CPU: `auto` (the default) trains with fp8 compute
off and says so in the log; an explicit tensorwise/rowwise is a named error before any training (nothing is
cached, no run folder); a mode without fp8_base is an error naming both options; --print-config shows it.
The tiny model set of train_env.py, one optimizer step."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run
from train_env import base_env, dataset, models  # noqa: F401  (fixtures)


def train(fluxtrain_bin, models, dataset, out: Path, check=True, **params):
    params = {"PARAMS_MAX_TRAIN_STEPS": 1, "PARAMS_SAVE_EVERY_N_STEPS": 0, **params}
    return run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, **params), check=check)


@pytest.mark.parametrize("mode", ["tensorwise", "rowwise"])
def test_an_explicit_mode_on_the_cpu_fails_before_training(tmp_path, fluxtrain_bin, models, dataset, mode):
    out = tmp_path / "out"
    result = train(fluxtrain_bin, models, dataset, out, check=False, PARAMS_FP8_COMPUTE=mode)
    assert result.returncode != 0, result.stderr
    assert (f'PARAMS_FP8_COMPUTE="{mode}" needs an NVIDIA GPU with fp8 tensor cores (compute capability 8.9 or '
            "newer: L4, L40, RTX 4090, H100, H200), but this run computes on the CPU") in result.stderr, result.stderr
    assert "set fp8_compute=auto" in result.stderr, result.stderr
    # Decided before the dataset and the weights: no cache, no run folder, no step.
    assert not (tmp_path / "cache").exists()
    assert not out.exists() or not list(out.rglob("*.safetensors"))
    assert "loss" not in result.stderr


def test_auto_trains_with_fp8_compute_off_and_logs_it(tmp_path, fluxtrain_bin, models, dataset):
    out = tmp_path / "out"
    result = train(fluxtrain_bin, models, dataset, out)  # fp8_base true and fp8_compute auto: the defaults
    line = "fp8 compute: off (auto: the CPU has no fp8 matmul)"
    assert line in result.stderr, result.stderr
    assert "fp8 weights are upcast instead" not in result.stderr  # the layer's fall-back warning never fires
    assert (out / "flux-lora.safetensors").exists()
    logs = list(out.rglob("fluxtrain.log"))
    assert logs and line in logs[0].read_text()
    # off explicitly is the same on the CPU
    result = train(fluxtrain_bin, models, dataset, tmp_path / "off", PARAMS_FP8_COMPUTE="off")
    assert "fp8 compute: off (fp8 weights are upcast on every call)" in result.stderr, result.stderr


def test_a_mode_without_fp8_base_names_both_options(tmp_path, fluxtrain_bin, models, dataset):
    result = train(fluxtrain_bin, models, dataset, tmp_path / "out", check=False, PARAMS_FP8_BASE="false",
                   PARAMS_FP8_COMPUTE="rowwise")
    assert result.returncode != 0, result.stderr
    assert ('PARAMS_FP8_COMPUTE="rowwise" multiplies the fp8 weights of an fp8 base, but PARAMS_FP8_BASE="false": there '
            "are none; set fp8_base=true (PARAMS_FP8_BASE=true) or fp8_compute=auto or off") in result.stderr, \
        result.stderr
    assert not (tmp_path / "cache").exists()


def test_print_config_shows_the_option(tmp_path, fluxtrain_bin, models, dataset):
    env = base_env(models, dataset, tmp_path / "out")
    shown = run([fluxtrain_bin, "train", "--print-config"], env=env, timeout=60).stdout
    assert 'fp8_compute = "auto"  (source: default)' in shown, shown
    shown = run([fluxtrain_bin, "train", "--print-config"], env={**env, "PARAMS_FP8_COMPUTE": "Tensorwise"},
                timeout=60).stdout
    assert 'fp8_compute = "tensorwise"  (source: env PARAMS_FP8_COMPUTE)' in shown, shown
    bad = run([fluxtrain_bin, "train", "--print-config"], env={**env, "PARAMS_FP8_COMPUTE": "fast"}, check=False,
              timeout=60)
    assert bad.returncode != 0
    assert "PARAMS_FP8_COMPUTE" in bad.stderr and "off, tensorwise, rowwise, auto" in bad.stderr, bad.stderr
