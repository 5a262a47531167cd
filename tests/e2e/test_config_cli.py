"""`fluxtrain config` as a container runs it: configured by the seed's environment variables only, then
with a TOML file and flags on top; bad values are named errors with exit code 1."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from conftest import ROOT, run

SEED_VARIABLES = [
    "BASE_MODEL", "DATASET_NAME", "DATASET_CONFIG", "SAMPLE_PROMPTS", "OUTPUT_PATH", "PARAMS_D_COEF",
    "PARAMS_LEARNING_RATE", "PARAMS_LEARNING_SCHEDULER", "PARAMS_MAX_EPOCHS", "PARAMS_NETWORK_ALPHA",
    "PARAMS_NETWORK_DIM", "PARAMS_NOISE_OFFSET", "PARAMS_NUM_CYCLES", "PARAMS_OPTIMIZER_ARGS",
    "PARAMS_OPTIMIZER_TYPE", "PARAMS_RESUME_FROM", "PARAMS_SAVE_EVERY_N_STEPS", "PARAMS_SAMPLE_EVERY_N_STEPS",
    "PARAMS_SPLIT_QKV", "PARAMS_WEIGHT_DECAY",
]

LINE = re.compile(r"^(\w+) = (.*)  \(source: (.*)\)$")


def clean_env(**variables: str) -> dict:
    """The process environment without any PARAMS_* or seed variable of the caller, nor the live page's
    MONITOR_* (conftest.py sets MONITOR_PORT=0 for every test), plus `variables`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARAMS_", "MONITOR_")) and k not in SEED_VARIABLES and k != "MODEL_DIR"}
    env.update(variables)
    return env


def model_dir(tmp_path: Path, names=("flux_dev.safetensors", "ae.safetensors", "clip_l.safetensors",
                                     "t5xxl_fp8_e4m3fn.safetensors")) -> Path:
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def config(fluxtrain_bin, env, *args, check=True):
    return run([fluxtrain_bin, "config", *args], env=env, check=check, timeout=60)


def parse(stdout: str) -> dict:
    values = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        assert m, f"not a config line: {line!r}"
        values[m.group(1)] = (m.group(2), m.group(3))
    return values


def seed_env(tmp_path: Path) -> dict:
    state = tmp_path / "state"
    state.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat --w 512 --h 512 --d 1\n")
    dataset = tmp_path / "dataset.toml"
    dataset.write_text("[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'img'\n")
    return clean_env(
        BASE_MODEL="flux", MODEL_DIR=str(model_dir(tmp_path)), DATASET_NAME="someone/photos",
        DATASET_CONFIG=str(dataset), SAMPLE_PROMPTS=str(prompts), OUTPUT_PATH=str(tmp_path / "out"),
        PARAMS_D_COEF="2", PARAMS_LEARNING_RATE="1", PARAMS_LEARNING_SCHEDULER="cosine_with_restarts",
        PARAMS_MAX_EPOCHS="16", PARAMS_NETWORK_ALPHA="8", PARAMS_NETWORK_DIM="32", PARAMS_NOISE_OFFSET="0.05",
        PARAMS_NUM_CYCLES="3", PARAMS_OPTIMIZER_ARGS="decouple=True use_bias_correction=True safeguard_warmup=True",
        PARAMS_OPTIMIZER_TYPE="prodigy", PARAMS_RESUME_FROM=str(state), PARAMS_SAVE_EVERY_N_STEPS="250",
        PARAMS_SAMPLE_EVERY_N_STEPS="100", PARAMS_SPLIT_QKV="true", PARAMS_WEIGHT_DECAY="0.01",
        PARAMS_SEED="", PARAMS_CACHE_DIR="",  # empty variables count as unset, as container templates leave them
    )


def test_seed_variables_only(tmp_path, fluxtrain_bin):
    env = seed_env(tmp_path)
    result = config(fluxtrain_bin, env)
    assert "warning" not in result.stderr, result.stderr
    v = parse(result.stdout)
    expected = {
        "base_model": ('"flux-dev"', "env BASE_MODEL"),
        "model_dir": (f'"{tmp_path / "models"}"', "env MODEL_DIR"),
        "dataset_name": ('"someone/photos"', "env DATASET_NAME"),
        "dataset_config": (f'"{tmp_path / "dataset.toml"}"', "env DATASET_CONFIG"),
        "sample_prompts": (f'"{tmp_path / "prompts.txt"}"', "env SAMPLE_PROMPTS"),
        "output_path": (f'"{tmp_path / "out"}"', "env OUTPUT_PATH"),
        "d_coef": ("2.0", "env PARAMS_D_COEF"),
        "learning_rate": ("1.0", "env PARAMS_LEARNING_RATE"),
        "lr_scheduler": ('"cosine_with_restarts"', "env PARAMS_LEARNING_SCHEDULER"),
        "max_train_epochs": ("16", "env PARAMS_MAX_EPOCHS"),
        "network_alpha": ("8.0", "env PARAMS_NETWORK_ALPHA"),
        "network_dim": ("32", "env PARAMS_NETWORK_DIM"),
        "noise_offset": ("0.05", "env PARAMS_NOISE_OFFSET"),
        "lr_scheduler_num_cycles": ("3", "env PARAMS_NUM_CYCLES"),
        "optimizer_args": ('"decouple=True use_bias_correction=True safeguard_warmup=True"', "env PARAMS_OPTIMIZER_ARGS"),
        "optimizer_type": ('"Prodigy"', "env PARAMS_OPTIMIZER_TYPE"),
        "resume_from": (f'"{tmp_path / "state"}"', "env PARAMS_RESUME_FROM"),
        "save_every_n_steps": ("250", "env PARAMS_SAVE_EVERY_N_STEPS"),
        "sample_every_n_steps": ("100", "env PARAMS_SAMPLE_EVERY_N_STEPS"),
        "split_qkv": ("true", "env PARAMS_SPLIT_QKV"),
        "weight_decay": ("0.01", "env PARAMS_WEIGHT_DECAY"),
        "seed": ("42", "the seed's default, train-flux.sh: --seed 42"),
        "cache_dir": ("(unset)", "default"),
        "device": ('"auto"', "default"),
    }
    for name, value in expected.items():
        assert v[name] == value, (name, v[name])
    # Every option is printed, once.
    assert len(v) == len(result.stdout.splitlines())
    # The model files were found in MODEL_DIR under the seed's names.
    assert f"{tmp_path / 'models' / 'flux_dev.safetensors'}" in result.stderr
    assert f"{tmp_path / 'models' / 't5xxl_fp8_e4m3fn.safetensors'}" in result.stderr


def test_precedence_cli_env_file_default(tmp_path, fluxtrain_bin):
    env = clean_env(MODEL_DIR=str(model_dir(tmp_path)), DATASET_NAME="a/b", PARAMS_NETWORK_DIM="8",
                    PARAMS_LEARNING_RATE="0.5")
    toml = tmp_path / "run.toml"
    toml.write_text('network_dim = 4\nnetwork_alpha = 2.0\n[optimizer]\nlearning_rate = 0.25\noptimizer_type = "AdamW"\n')
    v = parse(config(fluxtrain_bin, env, "--config", toml, "--learning-rate", "0.125", "--print-config").stdout)
    assert v["learning_rate"] == ("0.125", "cli --learning-rate")
    assert v["network_dim"] == ("8", "env PARAMS_NETWORK_DIM")
    assert v["network_alpha"] == ("2.0", f"file {toml}")
    assert v["optimizer_type"] == ('"AdamW"', f"file {toml}")
    assert v["lr_scheduler"] == ('"cosine"', "default")
    # The config file can also come from the environment.
    env["PARAMS_CONFIG"] = str(toml)
    assert parse(config(fluxtrain_bin, env).stdout)["network_alpha"] == ("2.0", f"file {toml}")


def test_toml_output_reads_back_to_the_same_values(tmp_path, fluxtrain_bin):
    env = seed_env(tmp_path)
    rng = random.Random()
    flags = ["--network-alpha", f"{rng.uniform(0.01, 64):.6g}", "--seed", str(rng.randrange(10**6)),
             "--resolution", "1280,768", "--guidance-scale", f"{rng.uniform(1, 5):.4g}"]
    first = config(fluxtrain_bin, env, *flags, "--format", "toml").stdout
    saved = tmp_path / "saved.toml"
    saved.write_text(first)
    # Read back with nothing else set: the same values, all from the file.
    again = parse(config(fluxtrain_bin, clean_env(), "--config", saved).stdout)
    before = parse(config(fluxtrain_bin, env, *flags).stdout)
    for name, (value, _) in before.items():
        if name == "config":  # the file itself, named on the command line
            continue
        if not re.search(rf"^(# )?{name} = ", first, flags=re.M):  # never in a file: torchrun's RANK, ...
            assert again[name][1] != f"file {saved}", name
            continue
        assert again[name][0] == value, name
        assert again[name][1] == (f"file {saved}" if value != "(unset)" else "default"), name


def expect_error(fluxtrain_bin, env, *args, contains):
    result = config(fluxtrain_bin, env, *args, check=False)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    for text in contains:
        assert text in result.stderr, (text, result.stderr)
    return result.stderr


def test_bad_values_are_named_errors(tmp_path, fluxtrain_bin):
    base = dict(MODEL_DIR=str(model_dir(tmp_path)), DATASET_NAME="a/b")
    expect_error(fluxtrain_bin, clean_env(**base, BASE_MODEL="sdxl"),
                 contains=['BASE_MODEL="sdxl"', "flux-dev", "flux-schnell"])
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_NETWORK_DIM="16x"),
                 contains=['PARAMS_NETWORK_DIM="16x"', "not an integer", "an integer in [1, 4096]"])
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_LEARNING_RATE="-1"),
                 contains=['PARAMS_LEARNING_RATE="-1"', "out of range", "a number > 0"])
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_OPTIMIZER_TYPE="adamx"),
                 contains=['PARAMS_OPTIMIZER_TYPE="adamx"', "did you mean AdamW?", "Prodigy, AdamW, AdamW8bit"])
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_LEARNING_SCHEDULER="cosinus"),
                 contains=['PARAMS_LEARNING_SCHEDULER="cosinus"', "cosine_with_restarts, polynomial"])
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_SPLIT_QKV="sure"),
                 contains=['PARAMS_SPLIT_QKV="sure"', "true or false"])
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_RESUME_FROM=str(tmp_path / "nope")),
                 contains=[f'PARAMS_RESUME_FROM="{tmp_path / "nope"}"', "no such file or folder"])
    expect_error(fluxtrain_bin, clean_env(**base), "--noise-offset", "2",
                 contains=['--noise-offset "2"', "a number in [0, 1]"])
    # A bad combination names both settings.
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_D_COEF="2", PARAMS_OPTIMIZER_TYPE="AdamW"),
                 contains=['PARAMS_D_COEF="2" applies to the Prodigy optimizer only', 'PARAMS_OPTIMIZER_TYPE="AdamW"'])
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_SAMPLE_EVERY_N_STEPS="100"),
                 contains=['PARAMS_SAMPLE_EVERY_N_STEPS="100"', "SAMPLE_PROMPTS"])
    # Missing model files: what was looked for, where.
    (tmp_path / "partial").mkdir()
    partial = model_dir(tmp_path / "partial", names=("ae.safetensors",))
    expect_error(fluxtrain_bin, clean_env(DATASET_NAME="a/b", MODEL_DIR=str(partial)),
                 contains=["3 model files missing", "flux1-dev.safetensors, flux_dev.safetensors or flux1-dev-fp8.safetensors",
                           "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors", f"MODEL_DIR={partial}"])
    # Several problems are reported together.
    expect_error(fluxtrain_bin, clean_env(**base, PARAMS_NETWORK_DIM="0", PARAMS_SEED="x"),
                 contains=["2 configuration errors", "PARAMS_NETWORK_DIM", "PARAMS_SEED"])
    # A TOML key that does not exist.
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rat = 1.0\n")
    expect_error(fluxtrain_bin, clean_env(**base), "--config", bad,
                 contains=[f"config file {bad}: unknown key learning_rat; did you mean learning_rate?"])


def test_unknown_params_variable_warns(tmp_path, fluxtrain_bin):
    env = clean_env(MODEL_DIR=str(model_dir(tmp_path)), DATASET_NAME="a/b", PARAMS_LEARNIN_RATE="3")
    result = config(fluxtrain_bin, env)
    assert "unknown environment variable PARAMS_LEARNIN_RATE is ignored; did you mean PARAMS_LEARNING_RATE?" in result.stderr
    assert parse(result.stdout)["learning_rate"] == ("1.0", "default")


def test_help_env_markdown_lists_every_variable(tmp_path, fluxtrain_bin):
    markdown = config(fluxtrain_bin, clean_env(), "--help-env", "--format", "markdown").stdout
    text = config(fluxtrain_bin, clean_env(), "--help-env").stdout
    for var in SEED_VARIABLES + ["MODEL_DIR"]:
        assert f"| `{var}`" in markdown, var
        assert var in text, var
    # Every PARAMS_ variable of the text reference is in the markdown one, and the other way round.
    md_vars = set(re.findall(r"`(PARAMS_[A-Z0-9_]+)`", markdown))
    assert md_vars == set(re.findall(r"\b(PARAMS_[A-Z0-9_]+)\b", text))
    # Every option that `config` prints has its row (found by its flag) in the reference, once.
    names = parse(config(fluxtrain_bin, clean_env(MODEL_DIR=str(model_dir(tmp_path)), DATASET_NAME="a/b")).stdout)
    flags = re.findall(r"^\| [^|]+ \| `(--[a-z0-9-]+)` \|", markdown, flags=re.M)
    # Options without a flag (torchrun's variables) have their row by their variable.
    flagless = set(re.findall(r"^\| `([A-Z0-9_]+)` \| \(none\) \|", markdown, flags=re.M))
    assert {"RANK", "WORLD_SIZE", "MASTER_PORT"} <= flagless
    # The flags other than --name: the issue's `--nproc` (torchrun's --nproc-per-node, shorter).
    custom = {"num_processes": "--nproc"}
    assert sorted(flags) == sorted(custom.get(n, "--" + n.replace("_", "-")) for n in names if n.upper() not in flagless)
    assert markdown.count("| Variable | Flag | Default | Allowed | Description |") >= 10
    assert "| `PARAMS_LEARNING_RATE` | `--learning-rate` | `1.0` |" in markdown
    bad = config(fluxtrain_bin, clean_env(), "--help-env", "--format", "html", check=False)
    assert bad.returncode == 1 and '--format "html"' in bad.stderr


def test_docs_reference_is_current(fluxtrain_bin):
    markdown = config(fluxtrain_bin, clean_env(), "--help-env", "--format", "markdown").stdout
    doc = (ROOT / "docs" / "configuration.md").read_text()
    m = re.search(r"^<!-- BEGIN generated reference[^\n]*\n(.*?)^<!-- END generated reference", doc, flags=re.S | re.M)
    assert m, "docs/configuration.md lost its generated-reference markers"
    assert m.group(1) == markdown, "docs/configuration.md is out of date: run scripts/update_config_reference.sh"


def test_usage_errors_exit_2(fluxtrain_bin):
    """A mistyped flag, a flag without its value or an unknown command is a usage error: exit code 2 (1 is
    kept for errors found in the values, as the option tables check them, and while running), whether the
    command lives in the small executable or in the engine."""
    for args, needle in ((["config", "--no-such-flag"], "--no-such-flag"),
                         (["train", "--bogus"], "--bogus"),
                         (["sample", "--width"], "--width"),
                         (["demo", "--steps"], "--steps"),
                         (["trian"], "did you mean 'train'")):
        result = run([fluxtrain_bin, *args], check=False, env=clean_env())
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        assert needle in result.stderr + result.stdout, (args, result.stderr)


def test_the_seed_cadences_are_the_defaults(tmp_path, fluxtrain_bin):
    """Issue 18: with only the seed's template variables, LoRA files every 100 steps and samples every 200
    (its train-flux.sh); without prompts the default sample cadence is no error, and the option reference
    lists both under "Defaults that follow the seed", with kohya's value beside them."""
    env = clean_env(MODEL_DIR=str(model_dir(tmp_path)), DATASET_NAME="a/b", OUTPUT_PATH=str(tmp_path / "out"))
    v = parse(config(fluxtrain_bin, env, "--print-config").stdout)
    assert v["save_every_n_steps"] == ("100", "the seed's default, train-flux.sh: PARAMS_SAVE_EVERY_N_STEPS=100 (--save_every_n_steps)")
    assert v["sample_every_n_steps"][0] == "200"
    assert v["save_state_every_minutes"] == ("10.0", "default")
    reference = config(fluxtrain_bin, env, "--help-env", "--format", "markdown").stdout
    table = reference.split("### Defaults that follow the seed")[1]
    assert "| `PARAMS_SAVE_EVERY_N_STEPS` | `100` | `0` | train-flux.sh: PARAMS_SAVE_EVERY_N_STEPS=100" in table
    assert "| `PARAMS_SAMPLE_EVERY_N_STEPS` | `200` | `0` | train-flux.sh: PARAMS_SAMPLE_EVERY_N_STEPS=200" in table


SEED_DEFAULTS = {  # issue 19: the seed's train-flux.sh defaults, as `config --print-config` shows them
    "save_every_n_steps": "100", "sample_every_n_steps": "200", "max_train_epochs": "5", "network_dim": "32",
    "network_alpha": "4.0", "noise_offset": "0.1", "weight_decay": "0.1", "d_coef": "2.0",
    "lr_scheduler_num_cycles": "1", "fp8_base": "true", "seed": "42", "optimizer_type": '"Prodigy"',
    "optimizer_args": '"decouple=True betas=0.9,0.999 use_bias_correction=False safeguard_warmup=False"',
    "timestep_sampling": '"sigmoid"', "discrete_flow_shift": "3.1582", "guidance_scale": "1.0", "loss_type": '"l2"',
    "save_precision": '"bf16"',
}


def test_the_seed_template_resolves_the_seeds_defaults(tmp_path, fluxtrain_bin):
    """Issue 19, item 0: with only the seed's four template variables, every option the seed's train-flux.sh
    sets takes its value there, each printed with that source; max_train_steps is unset (the run is 5
    epochs), and the option reference's seed table lists each with kohya's default beside it."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car --w 512 --h 512\n")
    env = clean_env(MODEL_DIR=str(model_dir(tmp_path)), BASE_MODEL="flux-dev", DATASET_NAME="owner/name",
                    SAMPLE_PROMPTS=str(prompts), OUTPUT_PATH=str(tmp_path / "out"))
    v = parse(config(fluxtrain_bin, env, "--print-config").stdout)
    for name, value in SEED_DEFAULTS.items():
        assert v[name][0] == value, (name, v[name])
        assert v[name][1].startswith("the seed's default, train-flux.sh"), (name, v[name])
    assert v["max_train_steps"] == ("(unset)", "default")
    assert v["learning_rate"] == ("1.0", "default")  # not one the seed sets
    reference = config(fluxtrain_bin, env, "--help-env", "--format", "markdown").stdout
    table = reference.split("### Defaults that follow the seed")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `PARAMS_")]
    listed = {row.split("`")[1] for row in rows}
    spec = {o["name"]: o for o in json.loads(config(fluxtrain_bin, env, "--help-env", "--format", "json").stdout)}
    assert listed == {spec[name]["env"] for name in SEED_DEFAULTS}, listed
    assert "| `PARAMS_MAX_EPOCHS` or `PARAMS_MAX_TRAIN_EPOCHS` | `5`; unset when max_train_steps is given | (none) |" in table
    # Given a step count, the run is that many steps and the epoch default steps aside; another optimizer
    # keeps its own settings.
    v = parse(config(fluxtrain_bin, {**env, "PARAMS_MAX_TRAIN_STEPS": "300", "PARAMS_OPTIMIZER_TYPE": "AdamW"},
                     "--print-config").stdout)
    assert v["max_train_steps"] == ("300", "env PARAMS_MAX_TRAIN_STEPS")
    assert v["max_train_epochs"] == ("(unset)", "default, max_train_steps is given")
    for name in ("optimizer_args", "d_coef", "weight_decay"):
        assert v[name] == ("(unset)", "default, the seed's value is Prodigy's, not AdamW's"), (name, v[name])


def test_the_seed_names_output_name_and_flux_ae(tmp_path, fluxtrain_bin):
    """Issue 19, item 0 (part): the seed's train-flux.sh reads OUTPUT_NAME and keeps the autoencoder as
    flux_ae.safetensors; both are understood."""
    folder = model_dir(tmp_path, names=("flux_dev.safetensors", "flux_ae.safetensors", "clip_l.safetensors",
                                        "t5xxl_fp16.safetensors"))
    result = config(fluxtrain_bin, clean_env(MODEL_DIR=str(folder), DATASET_NAME="a/b", OUTPUT_NAME="my-lora"),
                    "--print-config")
    assert parse(result.stdout)["output_name"] == ('"my-lora"', "env OUTPUT_NAME")
    assert f"{folder / 'flux_ae.safetensors'}" in result.stderr
