"""`fluxtrain train` on a folder as people ship it (docs/data.md "Folders as people ship them"): a Kaggle
detection tree (images/train/*.jpg, labels/train/*.txt of YOLO numbers, classes.txt, a CSV, COCO JSON)
named by a seed-style dataset.json with class_tokens. It trains, and the captions that reached the text
encoders — every text cache entry records its caption (`fluxtrain.caption`) — are the class tokens and the
one true caption, never a YOLO line."""
from __future__ import annotations

import json

from safetensors import safe_open

import detection_tree
from conftest import run
from train_env import base_env, models  # noqa: F401  (fixture)
from train_env import metrics as metrics_of


def encoded_captions(cache) -> list[str]:
    captions = []
    for entry in sorted((cache / "text").glob("*.safetensors")):
        with safe_open(str(entry), "pt") as f:
            captions.append(f.metadata()["fluxtrain.caption"])
    return captions


def test_detection_tree_with_class_tokens_trains_without_yolo_captions(tmp_path, fluxtrain_bin, models):
    root = detection_tree.write_detection_tree(tmp_path / "kaggle")
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps({
        "general": {"resolution": 64, "caption_extension": ".txt", "enable_bucket": True, "min_bucket_reso": 64,
                    "bucket_reso_steps": 32},
        "datasets": [{"batch_size": 1, "subsets": [{"image_dir": str(root), "class_tokens": "ohwx dog"}]}]}))
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    env = base_env(models, root, out, DATASET_CONFIG=config, PARAMS_CACHE_DIR=cache, PARAMS_MAX_TRAIN_STEPS=4)
    del env["DATASET_NAME"]
    result = run([fluxtrain_bin, "train"], env=env)
    assert (out / "flux-lora.safetensors").exists(), result.stderr
    assert [m["step"] for m in metrics_of(out)] == [1, 2, 3, 4]
    captions = encoded_captions(cache)
    assert sorted(captions) == sorted(["ohwx dog", detection_tree.REAL_CAPTION]), captions
    assert not [c for c in captions if detection_tree.YOLO_LINE.match(c)]
    # The start log warns with the counts.
    log = result.stderr
    assert "5 of 6 images in" in log and "they use the class tokens \"ohwx dog\"" in log, log
    assert f"{detection_tree.LABEL_FILES} label files in" in log and "are not captions" in log, log
    assert "images/val/val1.jpg (its caption file holds labels)" in log, log
    assert "loaded 6 images, 5 without a caption, 9 label files ignored (not captions)" in log, log
    assert "latent cache: 0 reused, 6 encoded" in log, log
    with safe_open(str(out / "flux-lora.safetensors"), "pt") as f:
        assert f.metadata()["modelspec.trigger_phrase"] == "ohwx dog"


def test_the_seeds_walkthrough_kaggle_detection_zip_trains(tmp_path, fluxtrain_bin, models):
    """Issue 19: the seed's walkthrough as written. DATASET_NAME=owner/name is fetched as the seed's
    container does — DATASET_HOST/owner/name, Kaggle's public download API, no credentials — from a fake
    Kaggle on 127.0.0.1 serving a zip shaped like a detection dataset (images/train/*.jpg,
    labels/train/*.txt of YOLO numbers, classes.txt, a CSV); a seed-style dataset.json with class_tokens and
    no image_dir reads the fetched set. It trains, the log names the source, and no YOLO line ever reaches
    the text encoders."""
    import io
    import zipfile

    from fake_http import Server, error, send_file

    tree = detection_tree.write_detection_tree(tmp_path / "tree")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(tree).as_posix())
    data = archive.getvalue()

    def app(handler):
        if handler.path != "/api/v1/datasets/download/amitkumargurjar/car-detection-and-tracking-dataset":
            return error(handler, 404, "not found")
        if "Authorization" in handler.headers:
            return error(handler, 400, "a public set needs no credentials")
        send_file(handler, data)

    kaggle = Server(app)
    try:
        config = tmp_path / "dataset.json"
        config.write_text(json.dumps({
            "general": {"resolution": 64, "caption_extension": ".txt", "enable_bucket": True,
                        "min_bucket_reso": 64, "bucket_reso_steps": 32},
            "datasets": [{"batch_size": 1, "subsets": [{"class_tokens": "ohwx car", "num_repeats": 1}]}]}))
        out, cache = tmp_path / "run", tmp_path / "cache"
        env = base_env(models, "amitkumargurjar/car-detection-and-tracking-dataset", out, DATASET_CONFIG=config,
                       PARAMS_CACHE_DIR=cache, PARAMS_MAX_TRAIN_STEPS=3,
                       DATASET_HOST=f"{kaggle.url}/api/v1/datasets/download",
                       DATASET_PATH=tmp_path / "workspace-dataset", HF_ENDPOINT="http://127.0.0.1:9",
                       NO_PROXY="127.0.0.1,localhost")
        for key in [k for k in env if k.startswith(("KAGGLE_", "HF_TOKEN", "FLUXTRAIN_DATASET")) or
                    k.lower().endswith("_proxy") and k != "NO_PROXY"]:
            del env[key]
        result = run([fluxtrain_bin, "train"], env=env)
    finally:
        kaggle.close()
    log = result.stderr
    assert [r["path"] for r in kaggle.requests] == [
        "/api/v1/datasets/download/amitkumargurjar/car-detection-and-tracking-dataset"]
    assert "was served by Kaggle (DATASET_HOST " in log, log
    assert (out / "flux-lora.safetensors").exists(), log
    assert [m["step"] for m in metrics_of(out)] == [1, 2, 3]
    captions = encoded_captions(cache)
    assert sorted(set(captions)) == sorted({"ohwx car", detection_tree.REAL_CAPTION}), captions
    assert not [c for c in captions if detection_tree.YOLO_LINE.match(c)]
    assert (tmp_path / "workspace-dataset" / "kaggle").is_dir()


def test_caption_extension_and_num_repeats_reach_a_bare_folder(tmp_path, fluxtrain_bin, models):
    """PARAMS_CAPTION_EXTENSION and PARAMS_NUM_REPEATS on a folder without a dataset config: the .caption
    files are the captions (not the .txt files beside them, a bare folder's default), and each image is seen
    3 times an epoch (kohya's ss_num_batches_per_epoch: 2 images x 3 repeats at batch size 1)."""
    from PIL import Image

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (90 * i, 120, 200)).save(folder / f"card{i}.png")
        (folder / f"card{i}.caption").write_text(f"a blue card number {i}\n", encoding="utf-8")
        (folder / f"card{i}.txt").write_text(f"the wrong caption {i}\n", encoding="utf-8")
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    env = base_env(models, folder, out, PARAMS_CACHE_DIR=cache, PARAMS_MAX_TRAIN_STEPS=1, PARAMS_SAVE_EVERY_N_STEPS=0,
                   PARAMS_CAPTION_EXTENSION=".caption", PARAMS_NUM_REPEATS=3)
    result = run([fluxtrain_bin, "train"], env=env)
    assert sorted(encoded_captions(cache)) == ["a blue card number 0", "a blue card number 1"], result.stderr
    with safe_open(str(out / "flux-lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_num_batches_per_epoch"] == "6", f.metadata()
