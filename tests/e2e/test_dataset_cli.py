"""`fluxtrain dataset` as a user runs it, on image folders and configs written here with PIL.

The bucket list and each image's bucket, resized size and centre crop are compared with
tests/reference/kohya_buckets.py, a transcription of kohya-ss/sd-scripts' rules (library/model_util.py
make_bucket_resolutions, library/train_util.py BucketManager.select_bucket and the centre crop): sd-scripts
is not a package, so no reference runs its own code.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

import detection_tree
from conftest import run
from reference import kohya_buckets


def dataset_json(fluxtrain_bin, *args):
    return json.loads(run([fluxtrain_bin, "dataset", "--json", *args]).stdout)


def save(path, width, height, fmt="PNG", color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, fmt)


def write_toml(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_table_steps_per_epoch(tmp_path, fluxtrain_bin):
    images = tmp_path / "images"
    for i in range(400):
        save(images / f"{i:04d}.png", 1280, 768)
        (images / f"{i:04d}.txt").write_text(f"ohwx, photo {i}", encoding="utf-8")
    for batch, steps in {4: 100, 8: 50, 16: 25, 32: 13, 48: 9, 56: 8, 60: 7}.items():
        config = write_toml(tmp_path / f"b{batch}.toml", f"""
[general]
resolution = 1024
enable_bucket = true
bucket_reso_steps = 128
max_bucket_reso = 2048
caption_extension = ".txt"
batch_size = {batch}
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{images}"
""")
        plan = dataset_json(fluxtrain_bin, "--config", config)
        assert plan["steps_per_epoch"] == steps, batch
        (ds,) = plan["datasets"]
        assert ds["buckets"] == [{"resolution": [1280, 768], "images": 400, "samples": 400, "batches": steps}]
        assert [1280, 768] in ds["bucket_resolutions"]
        assert plan["skipped"] == []
    assert plan["images"][7]["caption"] == "ohwx, photo 7"


def test_buckets_and_fits_match_the_spec(tmp_path, fluxtrain_bin):
    rng = random.Random(20240611)
    sizes = [(1280, 768), (768, 1280), (1024, 1024), (1000, 700), (333, 1999), (4000, 1000), (640, 480), (1500, 1000)]
    sizes += [(rng.randint(200, 3000), rng.randint(200, 3000)) for _ in range(24)]
    for i, (w, h) in enumerate(sizes):
        save(tmp_path / "img" / f"{i:03d}.png", w, h)
    for reso, min_b, max_b, step in [(1024, 256, 2048, 64), (1024, 256, 2048, 128), (512, 256, 1024, 64),
                                     ((1280, 768), 320, 1536, 32)]:
        rw, rh = reso if isinstance(reso, tuple) else (reso, reso)
        config = write_toml(tmp_path / "c.toml", f"""
[general]
resolution = {list(reso) if isinstance(reso, tuple) else reso}
enable_bucket = true
min_bucket_reso = {min_b}
max_bucket_reso = {max_b}
bucket_reso_steps = {step}
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{tmp_path / 'img'}"
""")
        plan = dataset_json(fluxtrain_bin, "--config", config)
        buckets = kohya_buckets.buckets(rw, rh, min_b, max_b, step)
        assert [tuple(b) for b in plan["datasets"][0]["bucket_resolutions"]] == buckets, reso
        for image in plan["images"]:
            w, h = image["size"]
            bucket, resized, crop = kohya_buckets.fit(buckets, w, h)
            assert (tuple(image["bucket"]), tuple(image["resized"]), tuple(image["crop"])) == (bucket, resized, crop), \
                (reso, step, w, h)
        counts = {}
        for image in plan["images"]:
            counts[tuple(image["bucket"])] = counts.get(tuple(image["bucket"]), 0) + 1
        assert {tuple(b["resolution"]): b["images"] for b in plan["datasets"][0]["buckets"]} == counts


def test_bare_folder_formats_captions_and_skips(tmp_path, fluxtrain_bin):
    folder = tmp_path / "photos"
    save(folder / "a.png", 1280, 768)
    save(folder / "b.JPG", 768, 1280, "JPEG")
    save(folder / "c.webp", 1024, 1024, "WEBP")
    save(folder / "d.bmp", 800, 600, "BMP")
    (folder / "a.txt").write_bytes("\ufeffohwx, a red car\r\nignored second line\r\n".encode("utf-8"))
    (folder / "b.txt").write_text("  ohwx, portrait  \n", encoding="utf-8")
    good = folder / "e.png"
    save(good, 640, 640)
    (folder / "broken.png").write_bytes(good.read_bytes()[:20])  # cut inside the header
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.gif").write_bytes(b"GIF89a")
    plan = dataset_json(fluxtrain_bin, "--dir", folder, "--batch-size", "2")
    names = [p["path"].rsplit("/", 1)[1] for p in plan["images"]]
    assert names == ["a.png", "b.JPG", "c.webp", "d.bmp", "e.png"]
    assert {s["path"].rsplit("/", 1)[1] for s in plan["skipped"]} == {"broken.png", "empty.jpg"}
    assert all(s["reason"] for s in plan["skipped"])
    captions = {p["path"].rsplit("/", 1)[1]: p["caption"] for p in plan["images"]}
    assert captions["a.png"] == "ohwx, a red car" and captions["b.JPG"] == "ohwx, portrait" and captions["c.webp"] == ""
    (ds,) = plan["datasets"]
    assert ds["resolution"] == [1024, 1024] and ds["enable_bucket"] and ds["max_bucket_reso"] == 2048
    assert ds["batch_size"] == 2 and ds["origin"]["batch_size"] == "--batch-size"
    assert ds["subsets"][0]["caption_extension"] == ".txt"
    assert plan["summary"].startswith("loaded 5 images, 3 without a caption, skipped 2: ")
    assert "broken.png" in plan["summary"] and "empty.jpg" in plan["summary"]
    # The text form says the same.
    text = run([fluxtrain_bin, "dataset", "--dir", folder]).stdout
    assert "steps per epoch" in text and "1280x768" in text and "skipped 2" in text


def test_repeat_folders_and_regularisation(tmp_path, fluxtrain_bin):
    for i in range(3):
        save(tmp_path / "train" / "10_ohwx person" / f"{i}.png", 1024, 1024)
    for i in range(4):
        save(tmp_path / "reg" / "1_person" / f"{i}.png", 1024, 1024)
    plan = dataset_json(fluxtrain_bin, "--dir", tmp_path / "train", "--reg-dir", tmp_path / "reg")
    subsets = plan["datasets"][0]["subsets"]
    assert [(s["num_repeats"], s["class_tokens"], s["is_reg"]) for s in subsets] == \
        [(10, "ohwx person", False), (1, "person", True)]
    assert plan["train_samples"] == 30 and plan["reg_samples"] == 30
    assert plan["steps_per_epoch"] == 60
    assert {p["caption"] for p in plan["images"]} == {"ohwx person", "person"}


def test_toml_and_json_configs_agree(tmp_path, fluxtrain_bin):
    for i in range(6):
        save(tmp_path / "a" / f"{i}.png", 1200 + 40 * i, 800)
        (tmp_path / "a" / f"{i}.txt").write_text(f"ohwx, tag{i}, red, blue, green", encoding="utf-8")
    toml = write_toml(tmp_path / "d.toml", f"""
[general]
enable_bucket = true
max_bucket_reso = 2048
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
flip_aug = true
[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  image_dir = "{tmp_path / 'a'}"
  num_repeats = 3
  random_crop = true
""")
    js = tmp_path / "d.json"
    js.write_text(json.dumps({
        "general": {"enable_bucket": True, "max_bucket_reso": 2048, "caption_extension": ".txt",
                    "shuffle_caption": True, "keep_tokens": 1, "flip_aug": True},
        "datasets": [{"batch_size": 2, "subsets": [{"image_dir": str(tmp_path / "a"), "num_repeats": 3,
                                                     "random_crop": True}]}]}), encoding="utf-8")
    a = dataset_json(fluxtrain_bin, "--config", toml, "--epoch", "2", "--seed", "7")
    b = dataset_json(fluxtrain_bin, "--config", js, "--epoch", "2", "--seed", "7")
    for plan in (a, b):
        plan.pop("source")
    assert a == b
    # The epoch plan: deterministic per (seed, epoch), different across epochs, every image 3 times.
    again = dataset_json(fluxtrain_bin, "--config", toml, "--epoch", "2", "--seed", "7")
    other = dataset_json(fluxtrain_bin, "--config", toml, "--epoch", "3", "--seed", "7")
    assert again["epoch_plan"] == a["epoch_plan"] and other["epoch_plan"] != a["epoch_plan"]
    seen = [s["image"] for batch in a["epoch_plan"] for s in batch["samples"]]
    assert sorted(seen) == sorted(list(range(6)) * 3)
    for batch in a["epoch_plan"]:
        for s in batch["samples"]:
            assert s["caption"].startswith("ohwx, ")
            assert sorted(s["caption"].split(", ")) == sorted(a["images"][s["image"]]["caption"].split(", "))


def test_config_errors_name_the_key(tmp_path, fluxtrain_bin):
    (tmp_path / "img").mkdir()
    cases = {
        "[general]\nbatchsize = 4\n": ["batchsize", "[general]", "batch_size"],
        "[general]\nresolution = \"1024\"\n": ["resolution", "\"1024\"", "[width, height]"],
        "[general]\ncaption_dropout_rate = 2.0\n": ["caption_dropout_rate", "0 to 1"],
        "[general]\nenable_bucket = true\nbucket_reso_steps = 40\n": ["bucket_reso_steps", "multiple of 32"],
    }
    for head, parts in cases.items():
        config = write_toml(tmp_path / "bad.toml", head + f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"{tmp_path / 'img'}\"\n")
        result = run([fluxtrain_bin, "dataset", "--config", config], check=False)
        assert result.returncode == 1, head
        for part in parts + [str(config)]:
            assert part in result.stderr, (part, result.stderr)
        assert "Traceback" not in result.stderr and "terminate" not in result.stderr
    result = run([fluxtrain_bin, "dataset", "--dir", tmp_path / "img"], check=False)
    assert result.returncode == 1 and "no usable training image" in result.stderr and str(tmp_path / "img") in result.stderr
    result = run([fluxtrain_bin, "dataset"], check=False)
    assert result.returncode == 1 and "--config" in result.stderr and "--dir" in result.stderr


# --- folders as people ship them (docs/data.md) ---------------------------------------------------------------

def test_bare_detection_folder_is_read_recursively_and_labels_are_not_captions(tmp_path, fluxtrain_bin):
    """A Kaggle detection tree given as a bare folder: the images in images/{train,val} are found, the true
    caption beside one is used, the YOLO files of labels/, classes.txt and the COCO JSON are counted as
    ignored label files, and no YOLO line is a caption of any image or of any sample of an epoch."""
    root = detection_tree.write_detection_tree(tmp_path / "kaggle")
    plan = dataset_json(fluxtrain_bin, "--dir", root, "--epoch", "1", "--resolution", "64")
    rel = sorted(str(Path(p["path"]).relative_to(root)) for p in plan["images"])
    assert rel == ["images/train/img0.jpg", "images/train/img1.jpg", "images/train/img2.jpg", "images/train/img3.jpg",
                   "images/val/val0.jpg", "images/val/val1.jpg"]
    (subset,) = plan["datasets"][0]["subsets"]
    assert subset["recursive"] is True and subset["origin"]["recursive"] == "folder default"
    captions = {Path(p["path"]).name: p["caption"] for p in plan["images"]}
    assert captions.pop("img1.jpg") == detection_tree.REAL_CAPTION
    assert set(captions.values()) == {""}
    used = [s["caption"] for batch in plan["epoch_plan"] for s in batch["samples"]] + list(captions.values())
    assert not [c for c in used if detection_tree.YOLO_LINE.match(c)]
    assert plan["captionless_images"] == detection_tree.CAPTIONLESS
    assert plan["label_files_ignored"] == detection_tree.LABEL_FILES
    assert subset["label_files"] == detection_tree.LABEL_FILES and subset["missing_captions"] == 5
    assert "5 without a caption, 9 label files ignored (not captions)" in plan["summary"]
    # The text form says the same; a default caption fills the captionless images.
    result = run([fluxtrain_bin, "dataset", "--dir", root, "--resolution", "64", "--default-caption", "a photo of a dog"])
    assert "5 without caption, 9 label files ignored" in result.stdout
    assert "9 label files in" in result.stderr and "labels/train/img0.txt (a file under labels/)" in result.stderr
    assert "images/val/val1.jpg (its caption file holds labels)" in result.stderr
    plan = dataset_json(fluxtrain_bin, "--dir", root, "--resolution", "64", "--default-caption", "a photo of a dog")
    captions = {Path(p["path"]).name: p["caption"] for p in plan["images"]}
    assert captions.pop("img1.jpg") == detection_tree.REAL_CAPTION
    assert set(captions.values()) == {"a photo of a dog"}
    assert plan["datasets"][0]["subsets"][0]["origin"]["default_caption"] == "--default-caption"


def test_seed_json_config_with_class_tokens_on_a_nested_tree(tmp_path, fluxtrain_bin):
    """The seed's kind of dataset.json (kohya's schema, class_tokens, no recursive key) pointing at the root
    of a nested tree: image_dir holds no images itself, so its sub-folders are read; captionless images take
    the class tokens. recursive = false keeps kohya's behaviour: no image, an error naming the folder. YOLO
    files beside the images (a flat export) are not captions either."""
    root = detection_tree.write_detection_tree(tmp_path / "kaggle")
    config = tmp_path / "dataset.json"
    subset = {"image_dir": str(root), "class_tokens": "ohwx dog", "num_repeats": 2}
    config.write_text(json.dumps({"general": {"resolution": 64, "caption_extension": ".txt", "enable_bucket": True,
                                              "min_bucket_reso": 64, "bucket_reso_steps": 32},
                                  "datasets": [{"batch_size": 1, "subsets": [subset]}]}))
    plan = dataset_json(fluxtrain_bin, "--config", config)
    (s,) = plan["datasets"][0]["subsets"]
    assert s["recursive"] is True and s["origin"]["recursive"] == "no images at the top of image_dir"
    captions = {Path(p["path"]).name: p["caption"] for p in plan["images"]}
    assert len(captions) == detection_tree.IMAGES
    assert captions.pop("img1.jpg") == detection_tree.REAL_CAPTION
    assert set(captions.values()) == {"ohwx dog"}
    assert plan["train_samples"] == 12 and plan["label_files_ignored"] == detection_tree.LABEL_FILES

    config.write_text(json.dumps({"datasets": [{"subsets": [{**subset, "recursive": False}]}]}))
    result = run([fluxtrain_bin, "dataset", "--config", config], check=False)
    assert result.returncode == 1 and "no usable training image" in result.stderr and str(root) in result.stderr
    assert "sub-folders are not read: set recursive = true" in result.stderr

    flat = tmp_path / "flat"
    for i in range(3):
        save(flat / f"{i}.png", 64, 64)
    (flat / "0.txt").write_text("0 0.5 0.5 0.25 0.25\n1 0.2 0.2 0.1 0.1\n")
    (flat / "1.txt").write_text("ohwx, sitting\n")
    (flat / "classes.txt").write_text("dog\n")
    config.write_text(json.dumps({"general": {"resolution": 64, "caption_extension": ".txt"},
                                  "datasets": [{"subsets": [{"image_dir": str(flat), "class_tokens": "ohwx dog"}]}]}))
    plan = dataset_json(fluxtrain_bin, "--config", config)
    assert [p["caption"] for p in plan["images"]] == ["ohwx dog", "ohwx, sitting", "ohwx dog"]
    assert plan["label_files_ignored"] == 2 and plan["captionless_images"] == 2
