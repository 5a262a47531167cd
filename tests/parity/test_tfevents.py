"""TensorBoard event files written by fluxtrain (tests/tools/events_tool) read back by TensorBoard itself.

Reference: the tensorboard package (requirements-test.txt; tests/reference/tfevents_reference.py).
TensorBoard's record reader (RawEventFileLoader, which checks both masked CRC-32Cs of every record) must
read every byte of the file; TensorBoard's compiled Event proto parses each record, which must be
protobuf's own serialization byte for byte; and TensorBoard's EventAccumulator, what its dashboards show,
must hold the scalars (float32 values, exact) and the image (the PNG bytes, exact) at their steps. The
image is a PNG encoded by Pillow, and must decode to the same pixels after the round trip.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run
from reference import tfevents_reference as tfr


def test_scalars_and_image_round_trip(tmp_path, events_tool):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    png = tmp_path / "sample.png"
    Image.fromarray(pixels, "RGB").save(png)
    n = 12

    result = run([events_tool, tmp_path / "logs", "--scalars", n, "--image", png, 24, 16, 3])
    info = json.loads(result.stdout)
    path = Path(info["path"])
    assert path.parent == tmp_path / "logs" and "tfevents" in path.name
    events = tfr.read_events(path)
    assert len(events) == 1 + n + 1 + 1

    assert events[0].WhichOneof("what") == "file_version"
    assert events[0].file_version == "brain.Event:2"
    for event in events:
        assert info["before"] - 1e-3 <= event.wall_time <= info["after"] + 1e-3
    for step in range(1, n + 1):
        assert events[step].step == step and events[step].WhichOneof("what") == "summary"
        assert [v.WhichOneof("value") for v in events[step].summary.value] == ["simple_value"] * 3

    # What TensorBoard's dashboards read: the accumulator over the log folder.
    acc = tfr.accumulate(tmp_path / "logs")
    assert acc.file_version == 2.0
    assert sorted(acc.Tags()["scalars"]) == ["big_step", "loss", "lr", "neg"]
    expected = {"loss": lambda i: 1.0 / (i + 1), "lr": lambda i: 1e-4 * i, "neg": lambda i: -i / 3.0}
    for tag, value in expected.items():
        scalars = acc.Scalars(tag)
        assert [s.step for s in scalars] == list(range(1, n + 1)), tag
        assert [s.value for s in scalars] == [float(np.float32(value(i))) for i in range(1, n + 1)], tag
    [big] = acc.Scalars("big_step")
    assert (big.step, big.value) == (2**40 + 3, 42.0)

    assert acc.Tags()["images"] == ["samples/0"]
    [image] = acc.Images("samples/0")
    assert image.step == n and (image.width, image.height) == (24, 16)
    assert image.encoded_image_string == png.read_bytes()
    assert events[n + 2].summary.value[0].image.colorspace == 3
    decoded = np.asarray(Image.open(BytesIO(image.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, pixels)


def test_resume_adds_a_file_with_a_session_start(tmp_path, events_tool):
    first = json.loads(run([events_tool, tmp_path, "--scalars", 5]).stdout)
    second = json.loads(run([events_tool, tmp_path, "--scalars", 2, "--purge-step", 4]).stdout)
    assert first["path"] != second["path"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(first["path"]).name, Path(second["path"]).name])
    events = tfr.read_events(second["path"])
    assert events[0].file_version == "brain.Event:2"
    assert events[1].WhichOneof("what") == "session_log"
    assert events[1].step == 4
    assert events[1].session_log.status == tfr.SessionLog.START


def test_a_killed_writer_leaves_every_record(tmp_path, events_tool):
    process = subprocess.Popen([events_tool, str(tmp_path), "--scalars", "50", "--hold"],
                               stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(process.stdout.readline())
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    events = tfr.read_events(info["path"])
    assert len(events) == 1 + 50 + 1
    assert events[50].step == 50
    assert [s.step for s in tfr.accumulate(info["path"]).Scalars("loss")] == list(range(1, 51))
