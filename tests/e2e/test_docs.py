"""The docs cannot drift from the program: docs/runpod.md's environment-variable references are what
`fluxtrain train --help-env --format markdown` and `fluxtrain fetch-models --help-env --format markdown`
print (scripts/update_runpod_doc.sh regenerates them), docs/commands.md holds every command's
(scripts/update_command_reference.sh). Also: every command's reference, --help and --print-config run in
the torch-free executable (a pod checks its settings without loading libtorch)."""
from __future__ import annotations

import json
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


COMMANDS_DOC = ROOT / "docs" / "commands.md"


def commands(fluxtrain_bin) -> list[str]:
    text = run([fluxtrain_bin, "--help"], env=light_env()).stdout
    listed = re.split(r"^subcommands:", text, flags=re.I | re.M)[1]
    return re.findall(r"^  ([a-z][a-z-]*) ", listed, re.M)


def test_every_command_is_on_its_table_and_documented(fluxtrain_bin):
    """Every command answers --help-env (markdown, text, json) and --help from its option table in the
    torch-free executable, and docs/commands.md holds each reference as the program prints it."""
    names = commands(fluxtrain_bin)
    assert {"inspect", "dataset", "fetch", "fetch-models", "config", "train", "cache", "sample", "merge", "make-tiny",
            "demo"} <= set(names), names
    doc = COMMANDS_DOC.read_text()
    program = run([fluxtrain_bin, "--help-env", "--format", "markdown"], env=light_env()).stdout
    assert "`FLUXTRAIN_LOG_LEVEL`" in program and "`FLUXTRAIN_ENGINE`" in program
    for name in ["fluxtrain", *names]:
        args = [] if name == "fluxtrain" else [name]
        markdown = run([fluxtrain_bin, *args, "--help-env", "--format", "markdown"], env=light_env()).stdout
        m = re.search(rf"^<!-- BEGIN generated {name} reference[^\n]*-->\n(.*?)^<!-- END generated {name} reference",
                      doc, re.S | re.M)
        assert m and m.group(1) == markdown, f"docs/commands.md's {name} reference is out of date: run " \
                                             "scripts/update_command_reference.sh"
        if name == "fluxtrain":
            continue
        specs = json.loads(run([fluxtrain_bin, name, "--help-env", "--format", "json"], env=light_env()).stdout)
        assert specs and all(s["name"] and s["group"] for s in specs), name
        helped = run([fluxtrain_bin, name, "--help"], env=light_env()).stdout
        for spec in specs:
            if spec["flag"] and not spec["positional"]:
                assert spec["flag"] in helped, (name, spec["flag"])


def test_every_command_prints_its_resolved_options(fluxtrain_bin, tmp_path):
    """--print-config resolves a command's options as the command would, without the engine; a bad value is
    the table's named error; secrets are never printed."""
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"")
    env = light_env(FLUXTRAIN_SAMPLE_WIDTH="512", HF_TOKEN="hf_do_not_print_me", PARAMS_DEVICE="cpu")
    printed = run([fluxtrain_bin, "sample", "--print-config", "--out", tmp_path, "--prompt", "x"], env=env).stdout
    assert re.search(r"^width = 512 +\(source: env FLUXTRAIN_SAMPLE_WIDTH\)$", printed, re.M), printed
    assert re.search(r'^device = "cpu" +\(source: env PARAMS_DEVICE\)$', printed, re.M), printed
    printed = run([fluxtrain_bin, "merge", "--print-config", "--lora", lora, "--lora", f"{lora}:0.5", "--out",
                   tmp_path / "m.safetensors"], env=env).stdout
    assert f'lora = ["{lora}", "{lora}:0.5"]' in printed, printed
    for args in (["fetch", "--print-config", "owner/set"], ["train", "--print-config"],
                 ["fetch-models", "--print-config", "--model-dir", tmp_path]):
        result = run([fluxtrain_bin, *args], env=env | {"DATASET_NAME": "owner/set"}, check=False)
        assert "hf_do_not_print_me" not in result.stdout + result.stderr, args
    bad = run([fluxtrain_bin, "demo", "--print-config", "--steps", "1"], env=env, check=False)
    assert bad.returncode == 1 and '--steps "1": out of range' in bad.stderr
    missing = run([fluxtrain_bin, "make-tiny", "--print-config"], env=env, check=False)
    assert missing.returncode == 1 and "out is required: give --out or FLUXTRAIN_TINY_OUT" in missing.stderr
