"""`fluxtrain demo` (= `make demo`), run as a user runs it: the shipped tiny model set learns the demo's
concept through a LoRA and the measured effect must clearly favour "after".

Figures checked (docs/demo.md): the share of magenta pixels in the trigger prompt's samples rises from
near nothing to a clear part of the picture (after >= 5 %, and >= 5x before plus 1 point), while the
control prompt the base knows ("a red circle") still shows red after training. The share is recomputed
here with Pillow from the PNGs, independently of the program's own figure. The run's TensorBoard file
must hold the sample images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run
from reference import tfevents_reference as tfr

MAGENTA = np.array([215, 40, 215])
RED = np.array([215, 40, 40])


def share(path: Path, color: np.ndarray, tolerance: float = 90) -> float:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    return float((np.linalg.norm(pixels - color, axis=-1) <= tolerance).mean())


def test_demo_teaches_the_concept(tmp_path, fluxtrain_bin):
    out = tmp_path / "demo"
    result = run([fluxtrain_bin, "demo", "--out", out], timeout=900)
    report = json.loads((out / "demo-report.json").read_text())
    before = sorted((out / "before").glob("*.png"))
    after = sorted((out / "after").glob("*.png"))
    assert len(before) == len(after) == 5, result.stdout

    # The program's figure equals an independent recomputation from the PNGs.
    ours_before = np.mean([share(p, MAGENTA) for p in before[:4]])
    ours_after = np.mean([share(p, MAGENTA) for p in after[:4]])
    assert abs(ours_before - report["concept_share_before"]) < 1e-9
    assert abs(ours_after - report["concept_share_after"]) < 1e-9
    print(f"demo: magenta share before {ours_before:.3f}, after {ours_after:.3f}; "
          f"red control before {report['control_share_before']:.3f}, after {report['control_share_after']:.3f}; "
          f"{report['seconds']:.0f} s")

    assert ours_after >= 0.05, result.stdout
    assert ours_after >= 5 * ours_before + 0.01, result.stdout
    # The base's own knowledge survives: the control prompt still draws red.
    assert report["control_share_after"] >= 0.05, result.stdout

    # What the user is told: the effect and the paths of every output.
    assert "the measured effect" in result.stdout and "done in" in result.stdout
    for path in before + after + [Path(report["lora"])]:
        assert str(path) in result.stdout
        assert path.exists()

    # The run's TensorBoard events hold the sample images (tag samples/<prompt index>).
    events_files = list((out / "lora" / "logs").glob("events.out.tfevents.*"))
    assert len(events_files) == 1
    image_steps = {}
    for event in tfr.read_events(events_files[0]):
        if event.WhichOneof("what") != "summary":
            continue
        for value in event.summary.value:
            if value.WhichOneof("value") == "image":
                assert value.image.width == 64 and value.image.height == 64
                image_steps.setdefault(value.tag, []).append(event.step)
    steps = report["steps"]
    assert image_steps == {f"samples/{i}": [steps // 2, steps] for i in range(5)}
