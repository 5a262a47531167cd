"""`fluxtrain dataset --lint` on a folder with one of each problem, and the one-line lint summary of `train`.

Every finding is checked word for word. The crop previews are checked three ways: crops.json's bucket,
scaled size and crop of each image against tests/reference/kohya_buckets.py (kohya's BucketManager rules,
as test_dataset_cli.py and tests/parity/test_photos.py check the plan); the pixels inside each crop box of
the PNG sheet against the trainer's own scale-and-cut (`image_tool resize`, the data::resize_image the
latent cache uses, cut at kohya's crop) exactly; and against Pillow's decode scaled by the references of
tests/parity/test_images.py (OpenCV INTER_AREA to shrink, Pillow LANCZOS to grow) within their 1 level.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run
from parity.test_images import opencv_area, pil_reference, resize
from reference import kohya_buckets
from train_env import base_env, dataset, models  # noqa: F401  (fixtures)

RESO, MIN_B, MAX_B, STEP = 128, 64, 256, 32
# 100 words: 100 CLIP tokens; 141 T5 ids with </s> (T5 cuts each repeat into "▁photo", "▁of", "▁", "a", "▁red",
# "▁", "fox"; tests/parity/test_tokenizers.py checks the tokenizers against transformers').
LONG_CAPTION = " ".join(["photo of a red fox"] * 20)


def picture(w, h, seed) -> Image.Image:
    """A smooth random picture (blocks of colour, blurred by the resize), distinct per seed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((w, h), Image.BICUBIC)


def write_lint_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)

    def add(name, image, caption):
        image.save(folder / name)
        if caption is not None:
            (folder / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")

    add("a.png", picture(160, 120, 1), "a red fox in the snow")
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes())  # exact duplicate
    (folder / "b.txt").write_text("the same fox again\n", encoding="utf-8")
    add("c.jpg", picture(160, 120, 1).resize((150, 112), Image.LANCZOS), "a fox, re-encoded")  # near duplicate
    add("full.jpg", picture(200, 150, 2), "a meadow")
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[:len(data) // 2])
    (folder / "truncated.txt").write_text("a meadow, cut off\n", encoding="utf-8")
    (folder / "full.jpg").unlink()
    (folder / "full.txt").unlink()
    add("tiny.png", picture(64, 64, 3), "a small blue bird")
    add("wide.png", picture(640, 64, 4), "a long panorama of hills")
    add("yolo.png", picture(128, 128, 5), "0 0.5 0.5 0.2 0.3\n1 0.25 0.4 0.1 0.1")
    add("numbers.png", picture(96, 160, 6), "12 7")
    add("empty.png", picture(120, 160, 7), None)
    add("long.png", picture(192, 128, 8), LONG_CAPTION)
    add("portrait.png", picture(100, 150, 9), "a tall tree by a lake")
    return folder


def config_for(tmp_path, images):
    config = tmp_path / "dataset.toml"
    config.write_text(f"""
[general]
resolution = {RESO}
enable_bucket = true
min_bucket_reso = {MIN_B}
max_bucket_reso = {MAX_B}
bucket_reso_steps = {STEP}
caption_extension = ".txt"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{images}"
""", encoding="utf-8")
    return config


EXPECTED = [
    "lint: unreadable: truncated.jpg: truncated JPEG (libjpeg: Premature end of JPEG file); re-download or "
    "re-export it: its header reads but its pixels do not, so caching its latents would stop the run; "
    "re-export or remove it",
    "lint: duplicate: b.png: exact copy of a.png (same SHA-256): it trains twice as often; remove one",
    None,  # the near duplicate: its distance is matched below
    "lint: upscaled: tiny.png: 64x64 is scaled up 2.00x to 128x128 for its 128x128 bucket (it will look soft); "
    "use a larger original or a lower resolution",
    "lint: aspect: wide.png: aspect ratio 10.00 (640x64) is outside the buckets' range 0.25 to 4.00: the crop to "
    "256x64 keeps 40% of it",
    "lint: empty_caption: empty.png: empty caption (no .txt caption file, or an empty one; no class_tokens or "
    "default_caption): it trains without text; write a .txt caption or set class_tokens or default_caption "
    "(PARAMS_DEFAULT_CAPTION)",
    # The scan does not take yolo.txt as a caption (data/label_files.h): yolo.png is captionless, and lint
    # names both the label file and the empty caption it leaves.
    "lint: empty_caption: yolo.png: empty caption (its caption file yolo.txt holds YOLO labels; no class_tokens or "
    "default_caption): it trains without text; write a .txt caption or set class_tokens or default_caption "
    "(PARAMS_DEFAULT_CAPTION)",
    "lint: label_caption: numbers.png: caption \"12 7\" is only numbers, not a description; is the .txt file a "
    "label file?",
    "lint: label_caption: yolo.txt: holds YOLO labels, not a caption: yolo.png is captionless and trains on an empty "
    "caption (no class_tokens or default_caption)",
    "lint: clip_length: long.png: caption is 100 CLIP tokens; CLIP-L reads 75 (77 ids with start and end), the "
    "last 25 are cut",
    "lint: t5_length: long.png: caption is 141 T5 tokens with </s>; T5 reads 64, the last 77 are cut",
]
SUMMARY = ("lint: 11 images, 11 findings: 1 unreadable image, 1 exact duplicate, 1 near duplicate, 1 upscaled "
           "image, 1 extreme aspect ratio, 2 empty captions, 2 label-like captions, 1 caption over CLIP's 77 tokens, "
           "1 caption over T5's limit")


def lint_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("lint: ")]


def check_crops(crops_file: Path, image_tool, tmp_path) -> set[str]:
    """crops.json against kohya's buckets, and the sheets' crop boxes against the trainer's pixels."""
    crops = json.loads(crops_file.read_text())
    buckets = kohya_buckets.buckets(RESO, RESO, MIN_B, MAX_B, STEP)
    sheets = {}
    exact = set()
    for entry in crops["images"]:
        path = Path(entry["path"])
        size = Image.open(path).size
        bucket, resized, crop = kohya_buckets.fit(buckets, *size)
        assert (tuple(entry["bucket"]), tuple(entry["resized"]), tuple(entry["crop"])) == (bucket, resized, crop), \
            entry
        assert entry["sheet"] == f"bucket-{bucket[0]}x{bucket[1]}-1.png", entry
        if entry["sheet"] not in sheets:
            sheets[entry["sheet"]] = np.asarray(Image.open(crops_file.parent / entry["sheet"]).convert("RGB"))
        sheet = sheets[entry["sheet"]]
        tx, ty, tw, th = entry["tile"]
        bx, by, bw, bh = entry["box"]
        if entry["scale"] != 1:
            # Shrunk to the tile: the box is the crop scaled the same way.
            s = entry["scale"]
            assert max(tw, th) == crops["tile"] and (tw, th) == (round(resized[0] * s), round(resized[1] * s))
            assert (bx - tx, by - ty, bw, bh) == (round(crop[0] * s), round(crop[1] * s), round(bucket[0] * s),
                                                  round(bucket[1] * s)), entry
            continue
        exact.add(path.name)
        assert (tw, th) == resized and (bx - tx, by - ty, bw, bh) == (*crop, *bucket), entry
        trainer = resize(image_tool, path, *resized, out=tmp_path / "resized.raw")
        shown = sheet[by:by + bh, bx:bx + bw]
        assert np.array_equal(shown, trainer[crop[1]:crop[1] + bucket[1], crop[0]:crop[0] + bucket[0]]), path.name
        # The reference scale of test_photos.py: Pillow's decode, area-shrunk or LANCZOS-grown, <= 1 level.
        ref = pil_reference(path)
        if ref.shape[:2] != (resized[1], resized[0]):
            ref = (opencv_area(ref, *resized) if resized[0] <= size[0]
                   else np.asarray(Image.fromarray(ref).resize(resized, Image.LANCZOS)))
        ref_crop = ref[crop[1]:crop[1] + bucket[1], crop[0]:crop[0] + bucket[0]]
        assert int(np.abs(shown.astype(int) - ref_crop.astype(int)).max()) <= 1, path.name
        # Outside the box (past the 1-pixel outline) the scaled image is dimmed to 90/256.
        tile = sheet[ty:ty + th, tx:tx + tw].astype(int)
        outside = np.ones((th, tw), bool)
        outside[max(0, by - ty - 1):by - ty + bh + 1, max(0, bx - tx - 1):bx - tx + bw + 1] = False
        assert np.array_equal(tile[outside], trainer.astype(int)[outside] * 90 // 256), path.name
    return exact


def test_lint_names_each_problem_and_draws_the_trainers_crops(tmp_path, fluxtrain_bin, image_tool):
    images = write_lint_folder(tmp_path / "images")
    config = config_for(tmp_path, images)
    out = tmp_path / "lint"
    result = run([fluxtrain_bin, "dataset", "--config", config, "--lint", "--lint-out", out,
                  "--lint-t5-max-length", "64"])
    lines = lint_lines(result.stdout)
    assert lines[-1] == SUMMARY, result.stdout
    findings = lines[:-1]
    assert len(findings) == len(EXPECTED), "\n".join(findings)
    for got, want in zip(findings, EXPECTED):
        if want is None:
            assert re.fullmatch(r"lint: near_duplicate: c\.jpg: near duplicate of a\.png \(dHash distance [0-6] of "
                                r"64 bits, threshold 6\)", got), got
        else:
            assert got == want
    # Buckets 96x160, 128x128, 160x96 and 256x64 (a.png, b.png and c.jpg are scaled up 1.07x: below 1.2x).
    assert f"crop previews: 4 sheets in {out}" in result.stdout
    # The bucket table is printed as without --lint.
    assert "buckets (images / with repeats / batches):" in result.stdout

    crops = json.loads((out / "crops.json").read_text())
    names = sorted(Path(e["path"]).name for e in crops["images"])
    assert names == sorted(p.name for p in images.glob("*") if p.suffix != ".txt" and p.name != "truncated.jpg")
    assert sorted(crops["sheets"]) == sorted(p.name for p in out.glob("*.png"))
    exact = check_crops(out / "crops.json", image_tool, tmp_path)
    assert exact == set(names) - {"wide.png"}  # 640 wide: shrunk to the 384 tile

    # Larger tiles: every crop at full scale; an earlier run's sheets in the folder are replaced.
    (out / "bucket-999x999-1.png").write_bytes(b"old")
    strict = run([fluxtrain_bin, "dataset", "--config", config, "--lint", "--lint-out", out, "--lint-tile", "1024",
                  "--lint-strict", "--json"], check=False)
    assert strict.returncode == 1, strict.stderr
    # T5's default 512 ids: the long caption fits.
    summary = SUMMARY.replace("11 findings", "10 findings").replace(", 1 caption over T5's limit", "")
    assert f"error: --lint-strict: {summary[len('lint: '):]}; fix them, or drop --lint-strict" in strict.stderr
    lint = json.loads(strict.stdout)["lint"]
    assert lint["summary"] == summary
    assert [f["name"] for f in lint["findings"]][:3] == ["truncated.jpg", "b.png", "c.jpg"]
    assert not (out / "bucket-999x999-1.png").exists()
    assert check_crops(out / "crops.json", image_tool, tmp_path) == set(names)


def test_lint_on_a_clean_folder_finds_nothing(tmp_path, fluxtrain_bin):
    images = tmp_path / "images"
    images.mkdir()
    for i, (w, h) in enumerate([(160, 128), (128, 160), (256, 256)]):
        picture(w, h, 20 + i).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a picture of a garden, number {i}\n", encoding="utf-8")
    result = run([fluxtrain_bin, "dataset", "--config", config_for(tmp_path, images), "--lint", "--lint-out",
                  tmp_path / "lint", "--lint-strict"])
    assert lint_lines(result.stdout) == ["lint: 3 images, no findings"]
    assert len(json.loads((tmp_path / "lint" / "crops.json").read_text())["images"]) == 3


def test_lint_says_what_an_image_with_a_label_file_trains_on(tmp_path, fluxtrain_bin):
    """A YOLO caption file in a kohya N_name folder: the image takes the class tokens, lint names the file and
    says so; with a default caption instead, that; neither is an empty caption."""
    root = tmp_path / "images"
    (root / "3_ohwx").mkdir(parents=True)
    for i in range(2):
        picture(128, 128, 40 + i).save(root / "3_ohwx" / f"{i}.png")
    (root / "3_ohwx" / "0.txt").write_text("a dog on a mat\n", encoding="utf-8")
    (root / "3_ohwx" / "1.txt").write_text("0 0.5 0.5 0.2 0.3\n2 0.1 0.2 0.05 0.05\n", encoding="utf-8")
    result = run([fluxtrain_bin, "dataset", "--dir", root, "--resolution", "128", "--lint", "--lint-out",
                  tmp_path / "lint"])
    assert lint_lines(result.stdout) == [
        "lint: label_caption: 1.txt: holds YOLO labels, not a caption: 1.png is captionless and takes its class "
        "tokens \"ohwx\"",
        "lint: 2 images, 1 finding: 1 label-like caption"], result.stdout
    flat = tmp_path / "flat"
    (root / "3_ohwx").rename(flat)
    result = run([fluxtrain_bin, "dataset", "--dir", flat, "--resolution", "128", "--default-caption", "a photo",
                  "--lint", "--lint-out", tmp_path / "lint"])
    assert lint_lines(result.stdout) == [
        "lint: label_caption: 1.txt: holds YOLO labels, not a caption: 1.png is captionless and takes the default "
        "caption \"a photo\"",
        "lint: 2 images, 1 finding: 1 label-like caption"], result.stdout


def test_train_prints_the_one_line_lint_summary(tmp_path, fluxtrain_bin, models, dataset):
    # The fixture's six images, plus a 32-px one with a YOLO label as its caption.
    folder = tmp_path / "data"
    (folder / "2_ohwx").mkdir(parents=True)
    for p in (dataset / "2_ohwx").iterdir():
        (folder / "2_ohwx" / p.name).write_bytes(p.read_bytes())
    picture(32, 32, 30).save(folder / "2_ohwx" / "small.png")
    (folder / "2_ohwx" / "small.txt").write_text("0 0.5 0.5 0.2 0.3\n", encoding="utf-8")
    result = run([fluxtrain_bin, "train"], env=base_env(models, folder, tmp_path / "out", PARAMS_MAX_TRAIN_STEPS=1,
                                                        PARAMS_SAVE_EVERY_N_STEPS=0))
    lines = [l for l in result.stderr.splitlines() if "dataset lint:" in l]
    # The 96x64 images lose a third to the 64x64 crop of the fixed resolution. small.txt is no caption (the scan
    # leaves small.png captionless, with the class tokens "ohwx"): lint counts it as a label-like caption.
    assert lines == ["warning: dataset lint: 7 images, 5 findings: 1 upscaled image, 3 extreme aspect ratios, "
                     "1 label-like caption (`fluxtrain dataset --lint` names them, decodes every image, finds "
                     "duplicates and draws the crops)"], result.stderr
