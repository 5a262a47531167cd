"""The memory planner (issue 20): `fluxtrain plan` predicts a training step's peak memory from the options
and the model's header; `--calibrate` runs real steps and measures the live peak of the tensors (the
caching CPU allocator's count, `max_memory_allocated` on CUDA). The prediction must be within 10 % of the
measurement on two model shapes, at four batch sizes and two checkpoint settings."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from conftest import run
from reference import tiny_models as tm

# Two shapes of the Flux.1 architecture (head width 128, as Flux.1): a wide one and a deep one.
SHAPES = {
    "wide": dict(hidden_size=256, num_heads=2, depth=2, depth_single_blocks=3, context_in_dim=256, vec_in_dim=64),
    "deep": dict(hidden_size=128, num_heads=1, depth=2, depth_single_blocks=8, context_in_dim=128, vec_in_dim=32),
}
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, fluxtrain_bin):
    tiny = tmp_path_factory.mktemp("tiny")
    run([fluxtrain_bin, "make-tiny", "--out", tiny, "--seed", "1"])
    dirs = {}
    for name, shape in SHAPES.items():
        folder = tmp_path_factory.mktemp(name)
        for f in tiny.iterdir():
            if f.name != "flux1-dev.safetensors":
                shutil.copy(f, folder / f.name)
        cfg = replace(tm.FLUX_DEV, **shape)
        save_file(tm.random_state_dict(tm.flux_shapes(cfg), torch.float32, 5), folder / "flux1-dev.safetensors")
        dirs[name] = folder
    return dirs


@pytest.fixture(scope="module")
def encoders_dir(tmp_path_factory, model_dirs):
    """A small transformer beside text encoders that weigh more than it (real vocabularies, width 256, four
    layers): a text-encoder LoRA's terms are most of the peak."""
    folder = tmp_path_factory.mktemp("encoders")
    shutil.copy(model_dirs["wide"] / "ae.safetensors", folder / "ae.safetensors")
    flux = replace(tm.FLUX_DEV, hidden_size=128, num_heads=1, depth=1, depth_single_blocks=1, context_in_dim=256,
                   vec_in_dim=256)
    clip = tm.ClipConfig(hidden_size=256, num_attention_heads=4, num_hidden_layers=4, intermediate_size=1024)
    t5 = tm.T5Config(d_model=256, d_kv=64, num_heads=4, d_ff=640, num_layers=4)
    save_file(tm.random_state_dict(tm.flux_shapes(flux), torch.float32, 5), folder / "flux1-dev.safetensors")
    save_file(tm.random_state_dict(tm.clip_shapes(clip), torch.float16, 6), folder / "clip_l.safetensors")
    save_file(tm.random_state_dict(tm.t5_shapes(t5), torch.float16, 7), folder / "t5xxl_fp16.safetensors")
    return folder


def plan(fluxtrain_bin, model_dir, tmp_path, *extra, calibrate=True, precision="fp32", resolution="512,384",
         t5_tokens=64):
    out = tmp_path / f"plan-{len(list(tmp_path.iterdir()))}.json"
    args = [fluxtrain_bin, "plan", "--model-dir", model_dir, "--device", "cpu", "--precision", precision,
            "--resolution", resolution, "--t5xxl-max-token-length", str(t5_tokens), "--network-dim", "8",
            "--optimizer-type", "AdamW", "--json", out, *extra]
    if calibrate:
        args.append("--calibrate")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMS_")}
    env.update({"FLUXTRAIN_LOG_LEVEL": "warn", "OMP_NUM_THREADS": "1"})
    result = run(args, env=env)
    return json.loads(out.read_text()), result.stdout


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("checkpointing", ["blocks", "off"])
def test_predicted_peak_is_within_ten_percent_of_the_measured(shape, checkpointing, model_dirs, fluxtrain_bin, tmp_path):
    extra = ["--gradient-checkpointing", "false"] if checkpointing == "off" else []
    errors = []
    for batch in (1, 2, 3, 4):
        result, _ = plan(fluxtrain_bin, model_dirs[shape], tmp_path, "--train-batch-size", str(batch), *extra)
        c = result["calibration"]
        assert c["batch"] == batch
        errors.append((batch, c["measured_peak_bytes"], c["predicted_peak_bytes"], c["error"]))
    print(f"{shape} checkpointing {checkpointing}: " +
          ", ".join(f"batch {b}: measured {m} predicted {p} error {e:+.3f}" for b, m, p, e in errors))
    for b, m, p, e in errors:
        assert abs(e) <= TOLERANCE, f"batch {b}: measured {m} bytes, predicted {p} ({e:+.1%})"


def test_full_finetune_predicted_peak_is_within_ten_percent_of_the_measured(model_dirs, fluxtrain_bin, tmp_path):
    """Full fine-tuning (network_type none): every weight trained, counted once (fp32 weights, gradients, AdamW
    state), not also as a frozen base."""
    for batch in (1, 2):
        result, _ = plan(fluxtrain_bin, model_dirs["wide"], tmp_path, "--network-type", "none",
                         "--train-batch-size", str(batch))
        c = result["calibration"]
        print(f"full fine-tuning batch {batch}: measured {c['measured_peak_bytes']} predicted "
              f"{c['predicted_peak_bytes']} error {c['error']:+.3f}")
        assert abs(c["error"]) <= TOLERANCE, c


@pytest.mark.parametrize("network", ["lokr", "loha", "dora"])
def test_lycoris_predicted_peak_is_within_ten_percent_of_the_measured(network, model_dirs, fluxtrain_bin, tmp_path):
    """LoKr and LoHa form each adapted weight's ΔW (kept by autograd until the backward), DoRA the norm of
    W + ΔW (a temporary): the planner counts both beside the factors."""
    extra = ["--network-type", "lora", "--dora-wd", "true"] if network == "dora" else ["--network-type", network]
    for checkpointing in ("true", "false"):
        for batch in (1, 2):
            result, _ = plan(fluxtrain_bin, model_dirs["wide"], tmp_path, *extra, "--train-batch-size", str(batch),
                             "--gradient-checkpointing", checkpointing)
            c = result["calibration"]
            print(f"{network} checkpointing {checkpointing} batch {batch}: measured {c['measured_peak_bytes']} "
                  f"predicted {c['predicted_peak_bytes']} error {c['error']:+.3f}")
            assert abs(c["error"]) <= TOLERANCE, c


@pytest.mark.parametrize("encoders", ["clip", "clip-and-t5"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_text_encoder_lora_predicted_peak_is_within_ten_percent_of_the_measured(encoders, precision, encoders_dir,
                                                                                fluxtrain_bin, tmp_path):
    """A text-encoder LoRA keeps both encoders loaded, trains the LoRA of CLIP-L (and T5-XXL) and holds their
    graphs until the backward: the planner counts the weights, the LoRA's state and the graphs (per image),
    here about half of the peak."""
    extra = ["--network-train-unet-only", "false"] + (["--train-t5xxl", "true"] if encoders == "clip-and-t5" else [])
    for batch in (1, 4):
        result, _ = plan(fluxtrain_bin, encoders_dir, tmp_path, *extra, "--train-batch-size", str(batch),
                         precision=precision, resolution="256,256", t5_tokens=256)
        terms = {t["name"]: t["bytes"] for t in result["terms"]}
        loaded = terms["text encoders kept loaded (CLIP-L and T5-XXL)"]
        graphs = next(v for k, v in terms.items() if k.startswith("the graphs of the trained text encoders"))
        c = result["calibration"]
        print(f"{encoders} {precision} batch {batch}: measured {c['measured_peak_bytes']} predicted "
              f"{c['predicted_peak_bytes']} error {c['error']:+.3f} (encoders {loaded}, their graphs {graphs} "
              f"per image)")
        assert (loaded + batch * graphs) > 0.3 * c["predicted_peak_bytes"], terms
        assert abs(c["error"]) <= TOLERANCE, c
