"""Multi-resolution training (ai-toolkit's `resolution: [512, 768, 1024]`, docs/data.md "Multi-resolution
training"): the plan of `fluxtrain dataset` lists one dataset per size with the bucket list and image fits of
kohya's rules at that size (tests/reference/kohya_buckets.py), and a `fluxtrain train` run over one epoch
trains batches of every size (each step's image size is in metrics.jsonl)."""
from __future__ import annotations

import json

from PIL import Image

from conftest import run
from reference import kohya_buckets
from train_env import base_env, metrics, models  # noqa: F401 (fixture)

SIZES = [64, 96, 128]


def write_images(folder, count=4):
    folder.mkdir(parents=True)
    for i in range(count):
        w, h = (96, 64) if i % 2 else (64, 96)
        Image.new("RGB", (w, h), (30 * i, 120, 200 - 30 * i)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"ohwx, picture {i}\n")
    return folder


def write_config(path, images, resolution):
    path.write_text(f"""
[general]
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 256
bucket_reso_steps = 32
batch_size = 2
[[datasets]]
resolution = {resolution}
  [[datasets.subsets]]
  image_dir = "{images}"
  caption_extension = ".txt"
""")
    return path


def test_plan_lists_buckets_per_resolution(tmp_path, fluxtrain_bin):
    images = write_images(tmp_path / "images")
    config = write_config(tmp_path / "multi.toml", images, SIZES)
    plan = json.loads(run([fluxtrain_bin, "dataset", "--json", "--config", config]).stdout)
    assert len(plan["datasets"]) == len(SIZES)
    by_dataset = {}
    for image in plan["images"]:
        by_dataset.setdefault(image["dataset"], []).append(image)
    steps = 0
    for index, (size, ds) in enumerate(zip(SIZES, plan["datasets"])):
        assert ds["resolution"] == [size, size]
        expected = kohya_buckets.buckets(size, size, 32, 256, 32)
        assert [tuple(b) for b in ds["bucket_resolutions"]] == expected, size
        # Each image once per size, fitted by kohya's rules at that size.
        assert len(by_dataset[index]) == 4
        for image in by_dataset[index]:
            w, h = image["size"]
            assert (tuple(image["bucket"]), tuple(image["resized"]), tuple(image["crop"])) == \
                kohya_buckets.fit(expected, w, h), (size, w, h)
        steps += sum(b["batches"] for b in ds["buckets"])
    assert plan["steps_per_epoch"] == steps == 3 * 2  # two buckets (2:3, 3:2) of two images per size


def test_a_run_trains_at_every_resolution(tmp_path, fluxtrain_bin, models):  # noqa: F811
    images = write_images(tmp_path / "images")
    config = write_config(tmp_path / "multi.toml", images, SIZES)
    output = tmp_path / "run"
    env = base_env(models, images, output, PARAMS_MAX_TRAIN_STEPS=6, PARAMS_SAVE_EVERY_N_STEPS=0)
    env["DATASET_CONFIG"] = str(config)
    del env["PARAMS_RESOLUTION"]
    run([fluxtrain_bin, "train"], env=env, timeout=600)
    trained = {(int(m["image_width"]), int(m["image_height"])) for m in metrics(output) if "image_width" in m}
    plan = json.loads(run([fluxtrain_bin, "dataset", "--json", "--config", config]).stdout)
    planned = {tuple(b["resolution"]) for ds in plan["datasets"] for b in ds["buckets"]}
    assert trained == planned and len(planned) == 6, (trained, planned)
    assert (output / "flux-lora.safetensors").exists()
