"""A detection dataset as Kaggle ships it, for the tests of folders as people ship them (docs/data.md):
images in sub-folders, YOLO label files in a parallel `labels/` tree, `classes.txt`, a CSV of boxes and
COCO annotations; one image has a true caption beside it. Shared by test_dataset_cli.py and
test_train_folders.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

REAL_CAPTION = "ohwx, a dog on a red mat"
# A YOLO label line (class id, then at least four numbers): what must never reach the text encoder.
YOLO_LINE = re.compile(r"^\s*\d+(\s+[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?){4,}\s*$")


def write_detection_tree(root: Path) -> Path:
    """images/{train,val}/*.jpg (64x64 and 96x64), labels/{train,val}/*.txt (YOLO boxes and a polygon),
    classes.txt, boxes.csv, annotations/instances_train.json; images/train/img1.txt is a true caption,
    images/val/val1.txt a copy of val1's YOLO labels.
    Returns root."""
    splits = {"train": 4, "val": 2}
    coco = {"images": [], "annotations": [], "categories": [{"id": 0, "name": "dog"}, {"id": 1, "name": "mat"}]}
    rows = ["image,xmin,ymin,xmax,ymax,label"]
    n = 0
    for split, count in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            w, h = (64, 64) if i % 2 == 0 else (96, 64)
            image = Image.new("RGB", (w, h), (30 * i + 40, 160 - 20 * i, 90))
            for x in range(w // 4, w // 2):
                for y in range(h // 4, h // 2):
                    image.putpixel((x, y), (250, 40 * i, 10))
            name = f"img{i}" if split == "train" else f"val{i}"
            image.save(root / "images" / split / f"{name}.jpg", quality=95)
            lines = [f"0 0.{37 + i} 0.43 0.2 0.3", "1 0.5 0.5 0.9 0.8"]
            if i == 1:
                lines.append("0 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4")  # a segmentation polygon
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
            rows.append(f"{name}.jpg,{w // 4},{h // 4},{w // 2},{h // 2},dog")
            coco["images"].append({"id": n, "file_name": f"{name}.jpg", "width": w, "height": h})
            coco["annotations"].append({"id": n, "image_id": n, "category_id": 0, "bbox": [w // 4, h // 4, w // 4, h // 4]})
            n += 1
    (root / "images" / "train" / "img1.txt").write_text(REAL_CAPTION + "\n")
    # Some exports also leave a YOLO file beside its image, where a caption would be.
    (root / "images" / "val" / "val1.txt").write_text((root / "labels" / "val" / "val1.txt").read_text())
    (root / "classes.txt").write_text("dog\nmat\n")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


# What the scan must report on this tree: 6 images (4 train + 2 val), 5 of them captionless; the ignored
# label files are the 6 YOLO files of labels/, the one beside val1.jpg, classes.txt and the COCO JSON.
IMAGES = 6
CAPTIONLESS = 5
LABEL_FILES = 9
