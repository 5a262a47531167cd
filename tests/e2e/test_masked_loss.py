"""Masked loss shown to train (issue 23): on the demo's tiny model set (assets/demo, which knows coloured shapes
but not the "zorbix"), pictures hold a magenta blob in their left half and a green blob in their right half.

- masked: an alpha mask keeps the left half (alpha 255) and drops the right half (alpha 0), `masked_loss=true`;
- mask images: the same mask given as black-and-white pictures in kohya's `conditioning_data_dir`;
- control: the same pictures without a mask.

After training, the LoRA's samples of the trigger prompt gain magenta in every run (the masked region's
content is learned), the control's gain green too (the unmasked region's content is learnable), and the
masked runs' green share stays where the base had it: only the masked region's pixels moved the LoRA. The
shares of magenta and green hues are measured with numpy from the sample PNGs; the figures are printed
(docs/training.md "Masked loss"). The alpha and the mask pictures give the same LoRA, tensor for tensor.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import run
from train_env import lora_tensors

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo"
MAGENTA = np.array([215, 40, 215])
GREEN = np.array([40, 200, 60])
SIZE = 64
STEPS = 300
PROMPTS = "".join(f"a zorbix on a white background --w 64 --h 64 --s 20 --g 1 --d {seed}\n" for seed in (1, 2, 3, 4))


def shares_of(path: Path) -> dict[str, float]:
    """The share of magenta-ish (red and blue both 60 above green) and green-ish (green 40 above red and blue)
    pixels: hues, not exact colours, since a LoRA's first steps move colours towards the pictures' only roughly."""
    px = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return {"magenta": float(((r > g + 60) & (b > g + 60)).mean()), "green": float(((g > r + 40) & (g > b + 40)).mean())}


def picture(i: int) -> Image.Image:
    """White, a magenta blob in the left half, a green blob in the right half (positions vary)."""
    rng = np.random.default_rng(100 + i)
    image = Image.new("RGB", (SIZE, SIZE), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    for color, x0 in ((tuple(MAGENTA), 0), (tuple(GREEN), SIZE // 2)):
        r = int(rng.integers(8, 13))
        cx = x0 + int(rng.integers(r, SIZE // 2 - r))
        cy = int(rng.integers(r, SIZE - r))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    return image


def left_half_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, SIZE // 2 - 1, SIZE - 1), fill=255)
    return mask


def write_dataset(root: Path, kind: str) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    masks = root / "masks"
    for i in range(8):
        rgb = picture(i)
        if kind == "alpha":
            rgba = rgb.convert("RGBA")
            rgba.putalpha(left_half_mask())
            rgba.save(images / f"img{i}.png")
        else:
            rgb.save(images / f"img{i}.png")
        if kind == "mask_images":
            masks.mkdir(exist_ok=True)
            left_half_mask().convert("RGB").save(masks / f"img{i}.png")
        (images / f"img{i}.txt").write_text("a zorbix on a white background\n")
    subset = f'image_dir = "{images}"\ncaption_extension = ".txt"\n'
    if kind == "alpha":
        subset += "alpha_mask = true\n"
    if kind == "mask_images":
        subset += f'conditioning_data_dir = "{masks}"\n'
    config = root / "dataset.toml"
    config.write_text(f"[general]\nresolution = {SIZE}\nbatch_size = 4\n[[datasets]]\n[[datasets.subsets]]\n{subset}")
    return config


def sample(fluxtrain_bin, prompts: Path, out: Path, lora: Path | None = None) -> list[Path]:
    args = [fluxtrain_bin, "sample", "--model-dir", DEMO, "--prompts", prompts, "--out", out, "--name", "s",
            "--t5-max-length", "16", "--device", "cpu"]
    if lora is not None:
        args += ["--lora", lora]
    run(args, timeout=300)
    files = sorted(out.glob("*.png"))
    assert len(files) == 4
    return files


def train(fluxtrain_bin, config: Path, output: Path, masked: bool) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMS_")}
    env.update({"MODEL_DIR": str(DEMO), "DATASET_CONFIG": str(config), "OUTPUT_PATH": str(output),
                "PARAMS_DEVICE": "cpu", "PARAMS_OUTPUT_NAME": "zorbix", "PARAMS_NETWORK_DIM": "8",
                "PARAMS_NETWORK_ALPHA": "8", "PARAMS_MAX_TRAIN_STEPS": str(STEPS), "PARAMS_SAVE_EVERY_N_STEPS": "0",
                "PARAMS_SAMPLE_EVERY_N_STEPS": "0", "PARAMS_T5XXL_MAX_TOKEN_LENGTH": "16",
                "PARAMS_GRADIENT_CHECKPOINTING": "false", "PARAMS_SEED": "43",
                "PARAMS_MASKED_LOSS": "true" if masked else "false"})
    run([fluxtrain_bin, "train"], env=env, timeout=900)
    return output / "zorbix.safetensors"


@pytest.fixture(scope="module")
def shares(tmp_path_factory, fluxtrain_bin):
    root = tmp_path_factory.mktemp("masked")
    prompts = root / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = {"before": sample(fluxtrain_bin, prompts, root / "before")}
    loras = {}
    for kind in ("alpha", "mask_images", "control"):
        config = write_dataset(root / f"data-{kind}", kind)
        loras[kind] = train(fluxtrain_bin, config, root / f"run-{kind}", masked=kind != "control")
        out[kind] = sample(fluxtrain_bin, prompts, root / f"after-{kind}", loras[kind])
    figures = {name: {color: float(np.mean([shares_of(p)[color] for p in files])) for color in ("magenta", "green")}
               for name, files in out.items()}
    print("masked loss shares:", {k: {c: round(v, 4) for c, v in f.items()} for k, f in figures.items()})
    return figures, loras


def test_masked_loss_learns_only_the_masked_region(shares):
    shares, _ = shares
    before = shares["before"]
    control = shares["control"]
    # The control learns both halves: the unmasked region's content (green) is learnable.
    assert control["magenta"] >= before["magenta"] + 0.015, shares
    assert control["green"] >= before["green"] + 0.015, shares
    for kind in ("alpha", "mask_images"):
        masked = shares[kind]
        # The masked region's content is learned ...
        assert masked["magenta"] >= before["magenta"] + 0.05, (kind, shares)
        # ... and the masked-out region's is not: green moves by less than a fifth of the control's gain.
        assert masked["green"] - before["green"] <= 0.2 * (control["green"] - before["green"]), (kind, shares)


def test_mask_images_and_alpha_masks_train_alike(shares):
    """The same mask given as an alpha channel or as mask pictures (their red channel): the same pixels, the same
    loss weights, so the same LoRA, tensor for tensor; the control's differs."""
    _, loras = shares
    alpha, pictures, control = (lora_tensors(loras[k]) for k in ("alpha", "mask_images", "control"))
    assert alpha.keys() == pictures.keys() == control.keys()
    assert all(torch.equal(alpha[k], pictures[k]) for k in alpha)
    assert not all(torch.equal(alpha[k], control[k]) for k in alpha)
