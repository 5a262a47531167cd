"""The Hugging Face Hub's dataset formats (docs/datasets.md "Hub dataset formats"): Parquet shards served by a
fake Hub on 127.0.0.1 and local imagefolders with metadata.jsonl / metadata.csv, converted once into images +
captions in the dataset cache and trained on. The captions are checked where they end up: a plain folder
with the expected captions fills the text cache first (`fluxtrain cache`), and each converted dataset must
then find every caption there ("text cache: N reused, 0 encoded": the cache key is the caption's exact
bytes) and every image ("latent cache: N reused": keyed by the image's bytes). Parquet files are written by
pyarrow (requirements-build.txt)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run
from fake_http import Server
from test_fetch import World, cdn_app, hub_app
from train_env import base_env, models  # noqa: F401  (fixture)

CAPTIONS = [f"ohwx, a red square number {i}" for i in range(4)] + ["ohwx, held out 4", "ohwx, held out 5"]


def png(i: int) -> bytes:
    w, h = (64, 64) if i % 2 == 0 else (96, 64)
    image = Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 90))
    for x in range(w // 4, w // 2):
        for y in range(h // 4, h // 2):
            image.putpixel((x, y), (250, 20 * i, 10))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


IMAGES = [png(i) for i in range(6)]


def parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=1)  # one row group per row: the reader walks several
    return out.getvalue()


def rows_table(rows: range) -> pa.Table:
    """Images as bytes, captions in `text`, and a column the reader must leave alone."""
    return pa.table({"image": pa.array([IMAGES[i] for i in rows], pa.binary()),
                     "text": [CAPTIONS[i] for i in rows], "label": list(rows)})


@pytest.fixture(scope="module")
def hub():
    world = World()
    world.lfs_suffixes = (".png", ".bin", ".parquet")  # as on the Hub: Parquet files are LFS, behind a redirect
    world.hub["owner/pics"] = {
        "README.md": b"---\nlicense: mit\n---\n",
        "data/train-00000-of-00002.parquet": parquet_bytes(rows_table(range(0, 2))),
        "data/train-00001-of-00002.parquet": parquet_bytes(rows_table(range(2, 4))),
        "data/test-00000-of-00001.parquet": parquet_bytes(rows_table(range(4, 6))),
    }
    cdn = Server(cdn_app(world))
    world.cdn_url = cdn.url
    server = Server(None)
    server.app = hub_app(world, server.url)
    yield server
    server.close()
    cdn.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, fluxtrain_bin, models):
    """The model/text/latent cache every run here shares, filled from a plain folder of all six images with
    the expected captions."""
    root = tmp_path_factory.mktemp("hubformats")
    plain = root / "plain"
    plain.mkdir()
    for i in range(6):
        (plain / f"p{i}.png").write_bytes(IMAGES[i])
        (plain / f"p{i}.txt").write_text(CAPTIONS[i])
    result = run([fluxtrain_bin, "cache"], env=env_for(models, plain, root, "plain"))
    assert "text cache: 0 reused, 6 encoded" in result.stderr, result.stderr[-3000:]
    return root


def env_for(models, dataset, root: Path, name: str, hub: Server | None = None, **params) -> dict:
    env = base_env(models, dataset, root / name / "out", **params)
    env = {k: v for k, v in env.items() if not k.startswith(("HF_", "HUGGING")) and not k.lower().endswith("_proxy")}
    env.update(PARAMS_CACHE_DIR=str(root / "cache"), FLUXTRAIN_DATASET_CACHE=str(root / name / "datasets"),
               HOME=str(root / name / "home"), NO_PROXY="127.0.0.1,localhost", FLUXTRAIN_HTTP_RETRIES="2",
               FLUXTRAIN_HTTP_BACKOFF_SECONDS="0.01")
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    return env


def converted(root: Path, name: str) -> tuple[dict, dict[bytes, str | None]]:
    """The marker of the one converted dataset of a run, and its images (bytes) with their captions."""
    found = list((root / name / "datasets" / "converted").glob("*/complete.json"))
    assert len(found) == 1, found
    folder = found[0].parent / "dataset"
    images = {}
    for p in sorted(folder.iterdir()):
        if p.suffix != ".txt":
            caption = p.with_suffix(".txt")
            images[p.read_bytes()] = caption.read_text() if caption.exists() else None
    return json.loads(found[0].read_text()), images


def expected(indices) -> dict[bytes, str]:
    return {IMAGES[i]: CAPTIONS[i] for i in indices}


def test_hub_parquet_shards_train_with_their_captions(fluxtrain_bin, models, shared, hub):
    """DATASET_NAME=hf:owner/pics: two train shards of Parquet (image bytes, `text`) and a test shard on the fake
    Hub; the train split's four rows are converted once, trained on, and their captions reach the text cache."""
    env = env_for(models, "hf:owner/pics", shared, "hub", hub)
    result = run([fluxtrain_bin, "train"], env=env)
    assert "text cache: 4 reused, 0 encoded" in result.stderr, result.stderr[-3000:]
    assert "latent cache: 4 reused, 0 encoded" in result.stderr, result.stderr[-3000:]
    assert (shared / "hub" / "out" / "flux-lora.safetensors").exists()
    marker, images = converted(shared, "hub")
    assert images == expected(range(4))
    assert (marker["layout"], marker["split"], marker["images_from"], marker["captions_from"]) == (
        "parquet", "train", "image", "text")
    assert marker["files"] == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    # Once: a second run reuses the converted folder.
    again = run([fluxtrain_bin, "cache"], env=env)
    assert "converted before" in again.stderr, again.stderr[-3000:]


def test_dataset_split_selects_another_split(fluxtrain_bin, models, shared, hub):
    env = env_for(models, "hf:owner/pics", shared, "split", hub, PARAMS_DATASET_SPLIT="test")
    result = run([fluxtrain_bin, "cache"], env=env)
    assert "text cache: 2 reused, 0 encoded" in result.stderr, result.stderr[-3000:]
    marker, images = converted(shared, "split")
    assert images == expected([4, 5]) and marker["split"] == "test"
    missing = run([fluxtrain_bin, "cache"], check=False,
                  env=env_for(models, "hf:owner/pics", shared, "split2", hub, PARAMS_DATASET_SPLIT="validation"))
    assert missing.returncode == 1
    assert "dataset_split 'validation' is not a split of" in missing.stderr
    assert "its splits are test, train" in missing.stderr and "PARAMS_DATASET_SPLIT" in missing.stderr


def test_imagefolder_with_metadata_jsonl_trains(fluxtrain_bin, models, shared, tmp_path):
    folder = tmp_path / "jsonl"
    (folder / "imgs").mkdir(parents=True)
    lines = []
    for i in range(4):
        (folder / "imgs" / f"a{i}.png").write_bytes(IMAGES[i])
        lines.append(json.dumps({"file_name": f"imgs/a{i}.png", "caption": CAPTIONS[i], "score": i * 0.5}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    result = run([fluxtrain_bin, "train"], env=env_for(models, folder, shared, "jsonl"))
    assert "text cache: 4 reused, 0 encoded" in result.stderr, result.stderr[-3000:]
    assert "latent cache: 4 reused, 0 encoded" in result.stderr, result.stderr[-3000:]
    assert (shared / "jsonl" / "out" / "flux-lora.safetensors").exists()
    marker, images = converted(shared, "jsonl")
    assert images == expected(range(4))
    assert (marker["layout"], marker["captions_from"]) == ("imagefolder", "caption")


def test_imagefolder_with_metadata_csv(fluxtrain_bin, models, shared, tmp_path):
    """CSV with quoted captions (they hold commas) in a `prompt` column beside another text column, and the
    metadata in the split's folder (train/metadata.csv)."""
    folder = tmp_path / "csv"
    (folder / "train").mkdir(parents=True)
    rows = ["file_name,prompt,source"]
    for i in range(4):
        (folder / "train" / f"b{i}.png").write_bytes(IMAGES[i])
        rows.append(f'b{i}.png,"{CAPTIONS[i]}",camera {i}')
    (folder / "train" / "metadata.csv").write_text("\n".join(rows) + "\n")
    result = run([fluxtrain_bin, "cache"], env=env_for(models, folder, shared, "csv"))
    assert "text cache: 4 reused, 0 encoded" in result.stderr, result.stderr[-3000:]
    marker, images = converted(shared, "csv")
    assert images == expected(range(4)) and marker["captions_from"] == "prompt"


def test_image_feature_structs_with_bytes_or_path(fluxtrain_bin, models, shared, tmp_path):
    """The `datasets` Image feature: struct<bytes, path>; rows without bytes name a file beside the Parquet
    file. The captions are the only text column (`description_of_image`), found by that rule."""
    folder = tmp_path / "structs"
    (folder / "data" / "pics").mkdir(parents=True)
    structs = []
    for i in range(4):
        if i < 2:
            structs.append({"bytes": IMAGES[i], "path": f"original_{i}.png"})
        else:
            (folder / "data" / "pics" / f"c{i}.png").write_bytes(IMAGES[i])
            structs.append({"bytes": None, "path": f"pics/c{i}.png"})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"picture": pa.array(structs, image_type),
                      "description_of_image": CAPTIONS[:4], "id": [10, 11, 12, 13]})
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    result = run([fluxtrain_bin, "cache"], env=env_for(models, folder, shared, "structs"))
    assert "text cache: 4 reused, 0 encoded" in result.stderr, result.stderr[-3000:]
    marker, images = converted(shared, "structs")
    assert images == expected(range(4))
    assert (marker["images_from"], marker["captions_from"]) == ("picture", "description_of_image")


def write_parquet(folder: Path, table: pa.Table) -> Path:
    path = folder / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("case", ["no image column", "no caption column", "caption_column missing",
                                  "corrupt parquet", "jsonl without file_name", "missing image file"])
def test_bad_hub_datasets_are_named_errors(fluxtrain_bin, models, shared, tmp_path, case):
    folder = tmp_path / "bad"
    folder.mkdir()
    params = {}
    if case == "no image column":
        path = write_parquet(folder, pa.table({"text": CAPTIONS[:2], "label": [1, 2]}))
        needles = [f"{path} has no image column", "text (string), label (int64)", "struct<bytes: binary, path: string>"]
    elif case == "no caption column":
        path = write_parquet(folder, pa.table({"image": pa.array(IMAGES[:2], pa.binary()), "a": ["x", "y"],
                                               "b": ["u", "v"]}))
        needles = [f"{path} has no caption column", "image (binary), a (string), b (string)", "there are 2: a, b",
                   "PARAMS_CAPTION_COLUMN"]
    elif case == "caption_column missing":
        path = write_parquet(folder, rows_table(range(2)))
        params["PARAMS_CAPTION_COLUMN"] = "caption"
        needles = [f"caption_column 'caption' is not a column of {path}", "image (binary), text (string), label (int64)",
                   "PARAMS_CAPTION_COLUMN"]
    elif case == "corrupt parquet":
        good = parquet_bytes(rows_table(range(2)))
        path = folder / "data" / "train-00000-of-00001.parquet"
        path.parent.mkdir()
        path.write_bytes(good[: len(good) // 2] + b"\0" * 64)
        needles = [f"{path}: not a readable Parquet file"]
    elif case == "jsonl without file_name":
        (folder / "a.png").write_bytes(IMAGES[0])
        path = folder / "metadata.jsonl"
        path.write_text(json.dumps({"image": "a.png", "text": CAPTIONS[0]}) + "\n")
        needles = [f"{path} has no file_name column", "image (string), text (string)"]
    else:
        path = folder / "metadata.jsonl"
        path.write_text(json.dumps({"file_name": "gone.png", "text": CAPTIONS[0]}) + "\n")
        needles = [f"{path}, row 0: the image 'gone.png' does not exist"]
    name = "bad-" + case.replace(" ", "-")
    result = run([fluxtrain_bin, "cache"], check=False, env=env_for(models, folder, shared, name, **params))
    assert result.returncode == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "terminate called" not in result.stderr
    left = shared / name / "datasets" / "converted"
    assert not left.exists() or list(left.iterdir()) == [], "a failed conversion left files behind"
