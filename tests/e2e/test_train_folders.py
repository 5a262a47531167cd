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
