"""Real photos in a dataset: the sample images of scikit-image as Debian's python3-skimage ships them
(astronaut, coffee, chelsea, rocket, ... — RGB, greyscale, palette and RGBA PNGs, baseline JPEGs and a
truncated JPEG), plus re-encodings made here (lossy WebP, JPEG with an EXIF rotation, lossless WebP).

`fluxtrain dataset --json` plans them; each image's bucket, scaled size and centre crop are checked against
kohya's BucketManager rules (tests/reference/kohya_buckets.py, a transcription of sd-scripts'
library/model_util.py and library/train_util.py: predefined bucket list; an exact-size bucket first, else
the first bucket of least aspect-ratio error; scale to cover; centre crop), and the pixels of
each crop (`image_tool resize`, cut at the plan's crop) against Pillow's decode resized by a reference with
the tolerances of tests/parity/test_images.py: <= 1 level for an area shrink (OpenCV's INTER_AREA) and
for Lanczos growth (Pillow LANCZOS), exact when no resize is needed. The truncated JPEG is skipped and
reported.

The photos are not in the repository: scripts/setup.sh unpacks the package's data folder into
~/.cache/fluxtrain/skimage-data (or uses /usr/lib/python3/dist-packages/skimage/data when the package is
installed); FLUXTRAIN_PHOTOS names another folder. Without them the test skips and says why.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import run
from reference import kohya_buckets
from test_images import opencv_area, pil_reference, resize

SHIPPED = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
           "hubble_deep_field.jpg", "retina.jpg", "camera.png", "cell.png", "page.png", "logo.png",
           "horse.png", "green_palette.png", "color.png"]


def photo_dir() -> Path | None:
    cache = Path(os.environ.get("FLUXTRAIN_VENV_CACHE", Path.home() / ".cache" / "fluxtrain"))
    candidates = [os.environ.get("FLUXTRAIN_PHOTOS"), "/usr/lib/python3/dist-packages/skimage/data",
                  cache / "skimage-data"]
    for c in candidates:
        if c and all((Path(c) / name).is_file() for name in SHIPPED + ["truncated.jpg"]):
            return Path(c)
    return None


def reference_crop(path, resized, bucket, crop) -> tuple[np.ndarray, int]:
    """Pillow's decode, scaled to `resized` by the reference filter, cut to the bucket; and the tolerance."""
    pixels = pil_reference(path)
    h, w = pixels.shape[:2]
    if (w, h) == tuple(resized):
        scaled, tolerance = pixels, 0
    elif resized[0] <= w and resized[1] <= h:
        scaled, tolerance = opencv_area(pixels, *resized), 1
    elif resized[0] >= w and resized[1] >= h:
        scaled, tolerance = np.asarray(Image.fromarray(pixels).resize(tuple(resized), Image.LANCZOS)), 1
    else:
        pytest.fail(f"{path}: a cover scale cannot grow one side and shrink the other ({w}x{h} -> {resized})")
    left, top = crop
    return scaled[top:top + bucket[1], left:left + bucket[0]], tolerance


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    source = photo_dir()
    if source is None:
        pytest.skip("the scikit-image sample photos are not here: scripts/setup.sh unpacks them into "
                    "~/.cache/fluxtrain/skimage-data (needs apt-get download python3-skimage), or set "
                    "FLUXTRAIN_PHOTOS to a folder that has " + ", ".join(SHIPPED))
    folder = tmp_path_factory.mktemp("photos") / "1_photo"
    folder.mkdir()
    for name in SHIPPED + ["truncated.jpg"]:
        (folder / name).write_bytes((source / name).read_bytes())
    # Re-encodings: lossy WebP, a JPEG stored sideways with EXIF orientation 6 (shown upright), and a
    # lossless WebP with orientation 8.
    Image.open(source / "coffee.png").save(folder / "coffee_q80.webp", "WEBP", quality=80)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(source / "chelsea.png").convert("RGB").transpose(Image.Transpose.ROTATE_90).save(
        folder / "chelsea_exif6.jpg", "JPEG", quality=92, exif=exif)
    exif[0x0112] = 8
    Image.open(source / "rocket.jpg").transpose(Image.Transpose.ROTATE_270).save(
        folder / "rocket_exif8.webp", "WEBP", lossless=True, exif=exif)
    return folder


@pytest.mark.parametrize("reso,min_b,max_b,step", [(512, 256, 1024, 64), (256, 128, 512, 32), (1024, 256, 2048, 128)])
def test_photos_land_in_kohyas_buckets_with_the_right_crops(photos, fluxtrain_bin, image_tool, tmp_path,
                                                           reso, min_b, max_b, step):
    config = tmp_path / "dataset.toml"
    config.write_text(f"""
[general]
resolution = {reso}
enable_bucket = true
min_bucket_reso = {min_b}
max_bucket_reso = {max_b}
bucket_reso_steps = {step}
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{photos}"
""", encoding="utf-8")
    plan = json.loads(run([fluxtrain_bin, "dataset", "--json", "--config", config]).stdout)
    buckets = kohya_buckets.buckets(reso, reso, min_b, max_b, step)
    assert [tuple(b) for b in plan["datasets"][0]["bucket_resolutions"]] == buckets

    assert [Path(s["path"]).name for s in plan["skipped"]] == ["truncated.jpg"], plan["skipped"]
    assert "truncated.jpg" in plan["summary"]
    expected = sorted(p.name for p in photos.iterdir() if p.name != "truncated.jpg")
    assert sorted(Path(i["path"]).name for i in plan["images"]) == expected

    used = set()
    for image in plan["images"]:
        path = Path(image["path"])
        upright = ImageOps.exif_transpose(Image.open(path))
        assert tuple(image["size"]) == upright.size, path.name
        bucket, resized, crop = kohya_buckets.fit(buckets, *upright.size)
        assert (tuple(image["bucket"]), tuple(image["resized"]), tuple(image["crop"])) == (bucket, resized, crop), \
            (path.name, upright.size)
        used.add(bucket)

        ours = resize(image_tool, path, *resized, out=tmp_path / "resized.raw")[crop[1]:crop[1] + bucket[1], crop[0]:crop[0] + bucket[0]]
        ref, tolerance = reference_crop(path, resized, bucket, crop)
        assert ours.shape == ref.shape == (bucket[1], bucket[0], 3), path.name
        diff = int(np.abs(ours.astype(int) - ref.astype(int)).max())
        assert diff <= tolerance, f"{path.name}: {upright.size} -> {resized} -> {bucket}: max diff {diff}"
    # Real photos of several shapes spread over several buckets, and the rotated copies land upright.
    assert len(used) >= 4
    sizes = {Path(i["path"]).name: tuple(i["size"]) for i in plan["images"]}
    assert sizes["chelsea_exif6.jpg"] == sizes["chelsea.png"] == (451, 300)
    assert sizes["rocket_exif8.webp"] == sizes["rocket.jpg"] == (640, 427)
