"""What the `fluxtrain train` end-to-end tests share: a tiny model set (`fluxtrain make-tiny`), a generated
image folder, and the seed's environment for a short run on them (test_train.py, test_train_options.py)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import run


@pytest.fixture(scope="module")
def models(tmp_path_factory, fluxtrain_bin):
    folder = tmp_path_factory.mktemp("models")
    run([fluxtrain_bin, "make-tiny", "--out", folder, "--seed", "3"])
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six small images in kohya's `N_name` folder with captions: two shapes, two aspect ratios."""
    return write_dataset(tmp_path_factory.mktemp("data"))


def write_dataset(root: Path) -> Path:
    """The `dataset` fixture's images and captions under `root` (also scripts/soak_kill.sh); returns root."""
    folder = root / "2_ohwx"
    folder.mkdir(parents=True)
    for i in range(6):
        w, h = (64, 64) if i % 2 == 0 else (96, 64)
        image = Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 90))
        for x in range(w // 4, w // 2):
            for y in range(h // 4, h // 2):
                image.putpixel((x, y), (250, 20 * i, 10))
        image.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"ohwx, a red square number {i}\n")
    return root


def base_env(models, dataset, output, **params):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMS_")}
    env.update({
        "BASE_MODEL": "flux",
        "MODEL_DIR": str(models),
        "DATASET_NAME": str(dataset),
        "OUTPUT_PATH": str(output),
        "SOURCE_DATE_EPOCH": "1700000000",
        "PARAMS_DEVICE": "cpu",
        "PARAMS_RESOLUTION": "64",
        "PARAMS_NETWORK_DIM": "4",
        "PARAMS_NETWORK_ALPHA": "4",
        "PARAMS_OPTIMIZER_TYPE": "AdamW",
        "PARAMS_LEARNING_RATE": "0.001",
        "PARAMS_LEARNING_SCHEDULER": "cosine",
        "PARAMS_MAX_TRAIN_STEPS": "8",
        "PARAMS_SAVE_EVERY_N_STEPS": "2",
        "PARAMS_SEED": "7",
        "PARAMS_CACHE_DIR": str(output.parent / "cache"),
    })
    env.update({k: str(v) for k, v in params.items()})
    return env


def lora_tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def metrics(output) -> list[dict]:
    return [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]


def comfyui_graph(png) -> dict[str, list[dict]]:
    """A sample PNG's ComfyUI graph (its `prompt` text chunk, ComfyUI's API format) as class_type -> the inputs
    of each node of that type, after checking the format: node ids map to {"class_type", "inputs"} and every
    link [id, output] names an existing node."""
    graph = json.loads(Image.open(png).text["prompt"])
    nodes: dict[str, list[dict]] = {}
    for node_id, node in graph.items():
        assert node_id.isdigit() and set(node) == {"class_type", "inputs"}, node
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert len(value) == 2 and value[0] in graph and isinstance(value[1], int), value
        nodes.setdefault(node["class_type"], []).append(node["inputs"])
    return nodes


def kill_after_state_and_resume(fluxtrain_bin, env, out, step: int):
    """Starts `fluxtrain train`, kills it with -9 once the state of `step` is complete (before the run ends),
    then runs it again with the same environment to the end; returns the resumed run's result."""
    proc = subprocess.Popen([str(fluxtrain_bin), "train"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = Path(out) / "state" / f"step-{step:08d}" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert marker.exists()
    assert not (Path(out) / "flux-lora.safetensors").exists(), "the run finished before it could be killed"
    resumed = run([fluxtrain_bin, "train"], env=env)
    assert "resumed from" in resumed.stderr
    return resumed
