"""`fluxtrain train` as a pod runs it: configured by the seed's environment variables only, on a tiny
model set (`fluxtrain make-tiny`) and a generated image folder. Checks the run folder, named errors with
nothing written, exact resume after kill -9 and after SIGTERM (byte-identical final LoRA), and reuse of the
caches. The options' effects are in test_train_options.py."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import run
from train_env import base_env, comfyui_graph, dataset, kill_after_state_and_resume, models  # noqa: F401  (fixtures)
from train_env import metrics as metrics_of


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fluxtrain_bin, models, dataset):
    """The uninterrupted run of base_env (8 steps, a save every 2) that the restarted runs must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out))
    return out, result


def test_env_only_run_writes_a_complete_run_folder(tmp_path, fluxtrain_bin, models, dataset, straight):
    out, result = straight
    final = out / "flux-lora.safetensors"
    assert final.exists(), result.stderr
    assert sorted(p.name for p in out.glob("flux-lora-step*.safetensors")) == [
        f"flux-lora-step{n:08d}.safetensors" for n in (2, 4, 6)]
    with safe_open(str(final), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_network_dim"] == "4" and meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["ss_optimizer"].startswith("AdamW") and meta["modelspec.trigger_phrase"] == "ohwx"
    assert any(k.endswith(".lora_down.weight") for k in keys) and all(k.startswith("lora_unet_") for k in keys)
    assert (out / "state" / "step-00000008" / "COMPLETE").exists()
    assert (out / "config.toml").exists() and (out / "logs" / "fluxtrain.log").exists()
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 9))
    assert all(l["loss"] > 0 and l["lr"] > 0 for l in lines)
    assert list((out / "logs").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert "latent cache: 0 reused, 6 encoded" in result.stderr
    # A second run with a new output folder reuses every cache entry.
    again = run([fluxtrain_bin, "train"], env=base_env(models, dataset, out.parent / "run2"))
    assert "latent cache: 6 reused, 0 encoded" in again.stderr
    assert "text cache: 6 reused, 0 encoded" in again.stderr


@pytest.mark.parametrize("name,value,needle", [
    ("BASE_MODEL", "sdxl", "BASE_MODEL"),
    ("PARAMS_LEARNING_RATE", "fast", "PARAMS_LEARNING_RATE"),
    ("PARAMS_NETWORK_DIM", "0", "PARAMS_NETWORK_DIM"),
    ("PARAMS_OPTIMIZER_TYPE", "adam9", "PARAMS_OPTIMIZER_TYPE"),
    ("PARAMS_LEARNING_SCHEDULER", "wavy", "PARAMS_LEARNING_SCHEDULER"),
    ("PARAMS_SPLIT_QKV", "maybe", "PARAMS_SPLIT_QKV"),
])
def test_bad_values_are_named_and_nothing_is_written(tmp_path, fluxtrain_bin, models, dataset, name, value, needle):
    out = tmp_path / "run"
    env = base_env(models, dataset, out)
    env[name] = value
    result = run([fluxtrain_bin, "train"], env=env, check=False)
    assert result.returncode == 1, result.stderr
    assert needle in result.stderr and value in result.stderr
    assert not out.exists()


def test_kill_9_and_restart_gives_the_same_lora(tmp_path, fluxtrain_bin, models, dataset, straight):
    out = tmp_path / "killed"
    env = base_env(models, dataset, out)
    kill_after_state_and_resume(fluxtrain_bin, env, out, 4)
    a = (straight[0] / "flux-lora.safetensors").read_bytes()
    b = (out / "flux-lora.safetensors").read_bytes()
    assert a == b


def test_sigterm_saves_a_complete_state_and_the_restart_gives_the_same_lora(tmp_path, fluxtrain_bin, models,
                                                                            dataset, straight):
    """SIGTERM after the first step: the step in progress finishes, a state is saved (the only one: no save is
    due before step 1000) and the process exits 0 within seconds; the restart with the same environment
    resumes from that state and writes a final LoRA byte-identical to the uninterrupted run's (the same
    options but for the save cadence, which is no part of the file; SOURCE_DATE_EPOCH fixes its date)."""
    out = tmp_path / "run"
    env = base_env(models, dataset, out, PARAMS_SAVE_EVERY_N_STEPS=1000)
    proc = subprocess.Popen([fluxtrain_bin, "train"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while (not metrics.exists() or metrics.stat().st_size == 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    started = time.time()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert time.time() - started < 30
    states = [p for p in (out / "state").iterdir() if (p / "COMPLETE").exists()]
    assert len(states) == 1, stderr
    assert "stopping on signal" in stderr
    step = int(states[0].name.split("-")[1])
    assert 0 < step < 8, "the run finished before the signal could stop it"
    assert not (out / "flux-lora.safetensors").exists()
    # The restart carries on from there.
    resumed = run([fluxtrain_bin, "train"], env=env)
    assert f"resumed from {states[0]} at step {step} of 8" in resumed.stderr, resumed.stderr
    assert [line["step"] for line in metrics_of(out)] == list(range(1, 9))
    assert (out / "flux-lora.safetensors").read_bytes() == (straight[0] / "flux-lora.safetensors").read_bytes()


def test_full_fine_tuning_writes_a_base_checkpoint(tmp_path, fluxtrain_bin, models, dataset):
    """PARAMS_NETWORK_TYPE=none trains every transformer weight; the result has the base's keys and loads
    as a base model (inspect identifies it as a Flux transformer)."""
    out = tmp_path / "run"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_NETWORK_TYPE="none",
                                               PARAMS_MAX_TRAIN_STEPS=2, PARAMS_SAVE_EVERY_N_STEPS=0))
    with safe_open(str(out / "flux-lora.safetensors"), "pt") as f:
        trained = set(f.keys())
        changed = f.get_tensor("double_blocks.0.img_attn.qkv.weight")
    with safe_open(str(models / "flux1-dev.safetensors"), "pt") as f:
        assert trained == set(f.keys())
        base = f.get_tensor("double_blocks.0.img_attn.qkv.weight")
    assert not (changed.float() == base.float()).all()
    info = json.loads(run([fluxtrain_bin, "inspect", "--json", out / "flux-lora.safetensors"]).stdout)
    assert info["components"][0]["details"]["variant"] == "dev"


def test_state_cadence_and_pruning(tmp_path, fluxtrain_bin, models, dataset):
    """A state comes with every save and the newest PARAMS_KEEP_LAST_N_STATES are kept; with
    PARAMS_SAVE_STATE=false only the final state (which marks the run finished) is written."""
    def states(out):
        return sorted(p.name for p in (out / "state").iterdir())

    out = tmp_path / "kept"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_KEEP_LAST_N_STATES=3))
    assert states(out) == ["step-00000004", "step-00000006", "step-00000008"]
    out = tmp_path / "none"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_SAVE_STATE="false"))
    assert states(out) == ["step-00000008"]
    assert len(list(out.glob("flux-lora-step*.safetensors"))) == 3


def test_samples_every_n_epochs(tmp_path, fluxtrain_bin, models, dataset):
    """PARAMS_SAMPLE_EVERY_N_EPOCHS: 12 images per epoch (6 x 2 repeats) in two buckets at batch 2 give 6
    steps an epoch; 12 steps sample after steps 6 and 12, one PNG per prompt each time."""
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ohwx, a red square --w 32 --h 32 --s 2 --d 1\na blue circle --w 32 --h 32 --s 2 --d 2\n")
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_TRAIN_BATCH_SIZE=2,
                                               PARAMS_MAX_TRAIN_STEPS=12, PARAMS_SAVE_EVERY_N_STEPS=0,
                                               PARAMS_SAMPLE_EVERY_N_EPOCHS=1, SAMPLE_PROMPTS=prompts))
    names = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert names == ["flux-lora_000006_00_1.png", "flux-lora_000006_01_2.png",
                     "flux-lora_000012_00_1.png", "flux-lora_000012_01_2.png"]
    # Each PNG carries its ComfyUI graph: the base, the LoRA to load (no step files here: the final one), the
    # prompt, seed, steps and size of that picture, on the sampler and schedule fluxtrain used.
    nodes = comfyui_graph(out / "samples" / "flux-lora_000006_00_1.png")
    assert [n["unet_name"] for n in nodes["UNETLoader"]] == ["flux1-dev.safetensors"]
    assert [(n["lora_name"], n["strength_model"]) for n in nodes["LoraLoaderModelOnly"]] == [("flux-lora.safetensors", 1.0)]
    assert [n["text"] for n in nodes["CLIPTextEncode"]] == ["ohwx, a red square"]
    assert [n["noise_seed"] for n in nodes["RandomNoise"]] == [1]
    assert [(n["scheduler"], n["steps"]) for n in nodes["BasicScheduler"]] == [("simple", 2)]
    assert [(n["width"], n["height"]) for n in nodes["EmptySD3LatentImage"]] == [(32, 32)]
    assert [n["sampler_name"] for n in nodes["KSamplerSelect"]] == ["euler"]
    assert [(n["width"], n["height"]) for n in nodes["ModelSamplingFlux"]] == [(32, 32)]
    assert [n["noise_seed"] for n in comfyui_graph(out / "samples" / "flux-lora_000012_01_2.png")["RandomNoise"]] == [2]


def test_cache_recomputes_only_what_changed(tmp_path, fluxtrain_bin, models, dataset):
    """`fluxtrain cache`: a second run encodes nothing; a changed image re-encodes just that image; a
    corrupt entry is recomputed with a warning; another AE re-encodes every latent but no text."""
    data = tmp_path / "data"
    (data / "2_ohwx").mkdir(parents=True)
    for f in (dataset / "2_ohwx").iterdir():
        (data / "2_ohwx" / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "run"
    env = base_env(models, data, out)
    first = run([fluxtrain_bin, "cache"], env=env)
    assert "latent cache: 0 reused, 6 encoded" in first.stderr
    assert "latent cache: 6 reused, 0 encoded" in run([fluxtrain_bin, "cache"], env=env).stderr
    image = Image.open(data / "2_ohwx" / "img3.png")
    image.putpixel((0, 0), (1, 2, 3))
    image.save(data / "2_ohwx" / "img3.png")
    assert "latent cache: 5 reused, 1 encoded" in run([fluxtrain_bin, "cache"], env=env).stderr
    entry = sorted((tmp_path / "cache" / "latents").iterdir())[0]
    entry.write_bytes(entry.read_bytes()[:20])
    corrupt = run([fluxtrain_bin, "cache"], env=env)
    assert "5 reused, 1 encoded (1 unreadable entries recomputed)" in corrupt.stderr
    assert "is unreadable and is recomputed" in corrupt.stderr
    # Entries are checked by their header (not read): one that lost its last bytes is caught by the size
    # the header describes, one of another bucket's shape by its shape.
    entries = sorted((tmp_path / "cache" / "latents").iterdir())
    entries[0].write_bytes(entries[0].read_bytes()[:-4])
    with safe_open(str(entries[1]), "pt") as f:
        c, h, w = f.get_slice("latents").get_shape()
    save_file({"latents": torch.zeros(c, h + 1, w)}, str(entries[1]))
    cut = run([fluxtrain_bin, "cache"], env=env)
    assert "latent cache: 4 reused, 2 encoded (2 unreadable entries recomputed)" in cut.stderr, cut.stderr
    assert "but its header describes" in cut.stderr
    assert f"tensor 'latents' is [{c}, {h + 1}, {w}], expected [-1, {h}, {w}]" in cut.stderr
    other_ae = tmp_path / "models2"
    run([fluxtrain_bin, "make-tiny", "--out", other_ae, "--seed", "4"])
    env["PARAMS_AE"] = str(other_ae / "ae.safetensors")
    changed = run([fluxtrain_bin, "cache"], env=env)
    assert "latent cache: 0 reused, 6 encoded" in changed.stderr
    assert "text cache: 6 reused, 0 encoded" in changed.stderr


def test_epoch_saves_and_resume_with_gradient_accumulation(tmp_path, fluxtrain_bin, models):
    """gradient_accumulation_steps 2 over 3 batches per epoch: as kohya, an optimizer step never spans two
    epochs (each epoch is 2 steps, the second of one batch), so every epoch ends on a step, is saved with
    save_every_n_epochs, and its state points at the start of the next epoch; resuming from the first
    epoch's state gives the uninterrupted run's LoRA."""
    data = tmp_path / "data"
    (data / "1_ohwx").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (60 * i, 90, 200 - 50 * i)).save(data / "1_ohwx" / f"img{i}.png")
        (data / "1_ohwx" / f"img{i}.txt").write_text(f"ohwx, colour {i}\n")
    straight = tmp_path / "straight"
    env = base_env(models, data, straight, PARAMS_GRADIENT_ACCUMULATION_STEPS=2, PARAMS_MAX_TRAIN_EPOCHS=3,
                   PARAMS_SAVE_EVERY_N_STEPS=0, PARAMS_SAVE_EVERY_N_EPOCHS=1, PARAMS_KEEP_LAST_N_STATES=3)
    del env["PARAMS_MAX_TRAIN_STEPS"]
    result = run([fluxtrain_bin, "train"], env=env)
    assert sorted(p.name for p in straight.glob("flux-lora*.safetensors")) == [
        "flux-lora-000001.safetensors", "flux-lora-000002.safetensors", "flux-lora.safetensors"], result.stderr
    assert len((straight / "metrics.jsonl").read_text().splitlines()) == 6
    states = {p.name: json.loads((p / "state.json").read_text()) for p in (straight / "state").iterdir()}
    assert sorted(states) == ["step-00000002", "step-00000004", "step-00000006"]
    for step in (2, 4, 6):
        info = states[f"step-{step:08d}"]
        assert (info["epoch"], info["batch_in_epoch"]) == (step // 2, 0), info

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "state").mkdir()
    shutil.copytree(straight / "state" / "step-00000002", resumed / "state" / "step-00000002")
    # A state from an older fluxtrain lacks the options added since: they count as their defaults then.
    state_json = resumed / "state" / "step-00000002" / "state.json"
    info = json.loads(state_json.read_text())
    del info["run"]["options"]["save_precision"], info["run"]["options"]["hf_endpoint"]
    state_json.write_text(json.dumps(info))
    # ... and its COMPLETE marker holds the step number only (no file sizes and hashes to verify).
    (state_json.parent / "COMPLETE").write_text("2\n")
    # Memory-only options may change on resume (their rule in the option table): the run goes on where it
    # was, and the numbers do not move.
    memory = {"PARAMS_GRADIENT_CHECKPOINTING_INTERVAL": "2", "PARAMS_PREFETCH_BATCHES": "0"}
    again = run([fluxtrain_bin, "train"], env=dict(env, OUTPUT_PATH=str(resumed), **memory))
    assert "resumed from" in again.stderr
    assert "gradient_checkpointing_interval: 1 -> 2 (memory only)" in again.stderr, again.stderr
    assert not list(resumed.glob("run-*"))
    assert (resumed / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()
    # A change that shapes the training starts a new run beside the old one.
    changed = run([fluxtrain_bin, "train"], env=dict(env, OUTPUT_PATH=str(resumed), PARAMS_NETWORK_DIM="2"))
    assert "network_dim: 4 -> 2" in changed.stderr and "this is a new run in" in changed.stderr, changed.stderr
    assert len(list(resumed.glob("run-*/flux-lora.safetensors"))) == 1


def test_checkpointing_settings_give_the_same_lora(tmp_path, fluxtrain_bin, models, dataset):
    """Checkpointing every block (attention and the hidden-wide products kept for the recomputation),
    every other block keeping every product but not attention, every block keeping nothing, and no
    checkpointing compute the same gradients bit for bit: the LoRAs' tensors are identical (the metadata
    records ss_gradient_checkpointing)."""
    runs = {
        "default": {},
        "interval": {"PARAMS_GRADIENT_CHECKPOINTING_INTERVAL": "2", "PARAMS_CHECKPOINT_KEEP_ATTENTION": "false",
                     "PARAMS_CHECKPOINT_KEEP_PRODUCTS": "all"},
        "nothing kept": {"PARAMS_CHECKPOINT_KEEP_ATTENTION": "false", "PARAMS_CHECKPOINT_KEEP_PRODUCTS": "none"},
        "off": {"PARAMS_GRADIENT_CHECKPOINTING": "false"},
    }
    files = {}
    for name, params in runs.items():
        out = tmp_path / name.replace(" ", "-")
        run([fluxtrain_bin, "train"], env=base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS="4", **params))
        config = (out / "config.toml").read_text()
        if name == "interval":
            assert "gradient_checkpointing_interval = 2" in config
            assert "checkpoint_keep_attention = false" in config
            assert 'checkpoint_keep_products = "all"' in config
        with safe_open(str(out / "flux-lora.safetensors"), "pt") as f:
            files[name] = {k: f.get_tensor(k) for k in f.keys()}
    for name in runs:
        assert files[name].keys() == files["default"].keys(), name
        for key, tensor in files["default"].items():
            assert torch.equal(tensor, files[name][key]), (name, key)
