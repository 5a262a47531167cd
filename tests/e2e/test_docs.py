"""docs/runpod.md cannot drift from the program: its environment-variable references are what
`fluxtrain train --help-env --format markdown` and `fluxtrain fetch-models --help-env --format markdown`
print (scripts/update_runpod_doc.sh regenerates them). Also: train's reference, --help and --print-config
run in the torch-free executable (a pod checks its settings without loading libtorch)."""
from __future__ import annotations

import os
import re

import pytest

from conftest import ROOT, run

DOC = ROOT / "docs" / "runpod.md"
NO_ENGINE = "/nonexistent/libfluxtrain_engine.so"


def section(text: str, name: str) -> str:
    match = re.search(rf"^<!-- BEGIN generated {name} reference[^\n]*-->\n(.*?)^<!-- END generated {name} reference",
                      text, re.S | re.M)
    assert match, f"docs/runpod.md has no generated {name} reference between its markers"
    return match.group(1)


def light_env(**extra) -> dict:
    """An environment whose engine library does not exist: only the torch-free executable can answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARAMS_", "MODEL_", "DATASET_"))}
    env["FLUXTRAIN_ENGINE"] = NO_ENGINE
    env.update(extra)
    return env


@pytest.mark.parametrize("command,name", [("train", "train"), ("fetch-models", "fetch-models")])
def test_runpod_doc_matches_the_option_tables(fluxtrain_bin, command, name):
    generated = run([fluxtrain_bin, command, "--help-env", "--format", "markdown"], env=light_env()).stdout
    assert section(DOC.read_text(), name) == generated, (
        f"docs/runpod.md's {name} reference is out of date: run scripts/update_runpod_doc.sh")


def test_train_reference_help_and_print_config_do_not_load_the_engine(fluxtrain_bin, tmp_path):
    env = light_env()
    markdown = run([fluxtrain_bin, "train", "--help-env", "--format", "markdown"], env=env).stdout
    assert "| `PARAMS_LEARNING_RATE` | `--learning-rate` |" in markdown
    assert "PARAMS_LEARNING_RATE" in run([fluxtrain_bin, "train", "--help-env"], env=env).stdout
    assert "--learning-rate" in run([fluxtrain_bin, "train", "--help"], env=env).stdout
    assert "--learning-rate" in run([fluxtrain_bin, "cache", "--help-env"], env=env).stdout
    models = tmp_path / "models"
    models.mkdir()
    for name in ("flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"):
        (models / name).write_bytes(b"")
    env = light_env(MODEL_DIR=str(models), DATASET_NAME="owner/set", PARAMS_NETWORK_DIM="8")
    printed = run([fluxtrain_bin, "train", "--print-config"], env=env).stdout
    assert re.search(r"^network_dim = 8 +\(source: env PARAMS_NETWORK_DIM\)", printed, re.M), printed
    bad = run([fluxtrain_bin, "train", "--print-config"], env=env | {"PARAMS_NETWORK_DIM": "0"}, check=False)
    assert bad.returncode == 1 and "PARAMS_NETWORK_DIM" in bad.stderr
    # The engine really is missing: training itself must load it, and says so.
    result = run([fluxtrain_bin, "train"], env=env, check=False)
    assert result.returncode == 1 and NO_ENGINE in result.stderr


def test_config_without_model_files(fluxtrain_bin):
    env = light_env(DATASET_NAME="owner/set")
    result = run([fluxtrain_bin, "config", "--without-model-files"], env=env)
    assert "dataset_name" in result.stdout
    result = run([fluxtrain_bin, "config"], env=env, check=False)
    assert result.returncode == 1 and "model file" in result.stderr
