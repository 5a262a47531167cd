"""kohya-ss/sd-scripts' bucket rules, transcribed (written from the upstream source and
shared/spec/training.md, not copied; sd-scripts is not a package, so there is nothing to import):
`make_bucket_resolutions` of library/model_util.py (the square of the same area, then (w, h) and (h, w) per
width step) and `BucketManager.select_bucket` of library/train_util.py without bucket_no_upscale (an
exact-size bucket first, else the first bucket of least aspect-ratio error; scale to cover, sizes rounded
with int(x + 0.5)), plus the centre crop of train_util's trim_and_resize_if_required. Used by
tests/e2e/test_dataset_cli.py, tests/e2e/test_dataset_lint.py and tests/parity/test_photos.py; docs/testing.md lists it as a transcription."""
from __future__ import annotations

import math


def buckets(reso_w: int, reso_h: int, min_size: int, max_size: int, step: int) -> list[tuple[int, int]]:
    area = reso_w * reso_h
    out = {(math.isqrt(area) // step * step,) * 2}
    for w in range(min_size, max_size + 1, step):
        h = min(max_size, area // w // step * step)
        if h >= min_size:
            out |= {(w, h), (h, w)}
    return sorted(out)


def fit(bucket_list, w: int, h: int):
    """(bucket, resized size, centre-crop offset) of a w x h image."""
    ar = w / h
    if (w, h) in bucket_list:
        bw, bh = w, h
    else:
        bw, bh = min(bucket_list, key=lambda b: abs(b[0] / b[1] - ar))  # min keeps the first of equals
    scale = bh / h if ar > bw / bh else bw / w
    rw, rh = int(w * scale + 0.5), int(h * scale + 0.5)
    return (bw, bh), (rw, rh), ((rw - bw) // 2, (rh - bh) // 2)
