"""Validation loss on held-out images and the pictures of every checkpoint (issue 22 items 3 and 4): the
validation loss on the metrics line of every save and epoch end, identical after a kill -9 and a resume;
a sample grid and a loss plot per checkpoint (PNG files of the documented size, and TensorBoard images);
report.html at the end, self-contained, naming the best checkpoint by validation loss."""
from __future__ import annotations

import re

import pytest
from PIL import Image

from conftest import run
from train_env import base_env, dataset, kill_after_state_and_resume, models  # noqa: F401  (fixtures)
from train_env import metrics as metrics_of

# src/report/report.h
CELL, LABEL, HEADER, PAD, PLOT = 256, 280, 36, 8, (1200, 600)


def grid_size(columns, rows):
    return LABEL + columns * (CELL + PAD) + PAD, HEADER + rows * (CELL + PAD) + PAD


def validation_env(models, dataset, out, prompts, **params):
    # 6 images (x2 repeats): 2 held out, 4 x 2 = 8 steps an epoch at batch 1; 8 steps, a LoRA every 2.
    return base_env(models, dataset, out, PARAMS_VALIDATION_SPLIT="0.34", SAMPLE_PROMPTS=prompts,
                    PARAMS_SAMPLE_EVERY_N_STEPS=4, **params)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("ohwx, a red square --w 32 --h 32 --s 2 --d 1\na blue circle --w 32 --h 48 --s 2 --d 2\n")
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fluxtrain_bin, models, dataset, prompts):  # noqa: F811
    out = tmp_path_factory.mktemp("validated") / "run"
    result = run([fluxtrain_bin, "train"], env=validation_env(models, dataset, out, prompts))
    return out, result


def test_validation_loss_grids_plots_and_report(straight):
    out, result = straight
    assert "2 of 6 images" in result.stderr and "held out for the validation loss" in result.stderr, result.stderr
    lines = metrics_of(out)
    assert [l["step"] for l in lines] == list(range(1, 9))
    validated = {l["step"]: l["validation_loss"] for l in lines if "validation_loss" in l}
    assert sorted(validated) == [2, 4, 6, 8], "a validation loss with every saved LoRA (and the epoch's end)"
    assert all(0 < v < 10 for v in validated.values())
    assert len(set(validated.values())) > 1, "the validation loss does not follow the weights"

    # A grid per sampled step (steps 4 and 8: one column, then two; a row per prompt) and a plot per checkpoint.
    grids = out / "grids"
    assert Image.open(grids / "samples-00000004.png").size == grid_size(1, 2)
    assert Image.open(grids / "samples-00000008.png").size == grid_size(2, 2)
    for step in (2, 4, 6, 8):
        assert Image.open(grids / f"loss-{step:08d}.png").size == PLOT
    assert list((out / "logs" / "report").glob("events.out.tfevents.*")), "no TensorBoard pictures"

    html = (out / "report.html").read_text()
    best = min(validated, key=validated.get)
    best_file = "flux-lora.safetensors" if best == 8 else f"flux-lora-step{best:08d}.safetensors"
    assert f"Best by validation loss: <b>{best_file}</b>" in html
    # Self-contained: the pictures inline, links only to the files beside it, no script, stylesheet or font
    # from elsewhere.
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    links = re.findall(r'href="([^"]*)"', html)
    assert links and all(":" not in link and not link.startswith("/") and (out / link).is_file() for link in links)
    assert not re.search(r"<script|<link|@import|url\(", html)


def test_validation_loss_is_the_same_after_kill_9_and_resume(tmp_path, fluxtrain_bin, models, dataset, prompts,
                                                             straight):  # noqa: F811
    out = tmp_path / "killed"
    env = validation_env(models, dataset, out, prompts)
    kill_after_state_and_resume(fluxtrain_bin, env, out, 4)
    before = {l["step"]: l.get("validation_loss") for l in metrics_of(straight[0])}
    after = {l["step"]: l.get("validation_loss") for l in metrics_of(out)}
    assert after == before
    assert (out / "flux-lora.safetensors").read_bytes() == (straight[0] / "flux-lora.safetensors").read_bytes()
