"""TensorBoard event files written by fluxtrain (tests/tools/events_tool) read back by a reference decoder.

Reference used: TensorBoard itself (and tensorboardX, torch.utils.tensorboard, which needs it) is not in
the test venv, and the requirements stay as they are. The reference is therefore the `protobuf` library
(Google's own parser, 6.x in the venv) with the Event, SessionLog and Summary messages declared at run
time through descriptor_pb2 with the field numbers, types and oneofs of
tensorboard/compat/proto/event.proto and summary.proto. Every record is parsed by it, and re-serialized:
the bytes fluxtrain wrote must equal protobuf's own serialization byte for byte. The TFRecord framing
(length, masked CRC-32C of the length, data, masked CRC-32C of the data; tensorflow's record_writer.cc)
is checked with a CRC-32C written here from the definition (bitwise, not table-driven like the C++).
The image is a PNG encoded by Pillow, and must decode to the same pixels after the round trip.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run
from reference import tfevents_reference as tfr

_crc32c = tfr._crc32c
_masked = tfr._masked
_events = tfr.read_events


@pytest.fixture(scope="module")
def messages():
    return tfr.event_messages()


def test_crc32c_reference_itself():
    assert _crc32c(b"123456789") == 0xE3069283


def test_scalars_and_image_round_trip(tmp_path, events_tool, messages):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    png = tmp_path / "sample.png"
    Image.fromarray(pixels, "RGB").save(png)
    n = 12

    result = run([events_tool, tmp_path / "logs", "--scalars", n, "--image", png, 24, 16, 3])
    info = json.loads(result.stdout)
    path = Path(info["path"])
    assert path.parent == tmp_path / "logs" and "tfevents" in path.name
    events = _events(messages, info["path"])
    assert len(events) == 1 + n + 1 + 1

    assert events[0].WhichOneof("what") == "file_version"
    assert events[0].file_version == "brain.Event:2"
    for event in events:
        assert info["before"] - 1e-3 <= event.wall_time <= info["after"] + 1e-3

    for step in range(1, n + 1):
        event = events[step]
        assert event.step == step and event.WhichOneof("what") == "summary"
        got = {v.tag: v.simple_value for v in event.summary.value}
        assert [v.WhichOneof("value") for v in event.summary.value] == ["simple_value"] * 3
        expected = {"loss": 1.0 / (step + 1), "lr": 1e-4 * step, "neg": -step / 3.0}
        assert got == {k: float(np.float32(v)) for k, v in expected.items()}

    big = events[n + 1]
    assert big.step == 2**40 + 3
    assert big.summary.value[0].tag == "big_step" and big.summary.value[0].simple_value == 42.0

    image_event = events[n + 2]
    assert image_event.step == n
    value = image_event.summary.value[0]
    assert value.tag == "samples/0" and value.WhichOneof("value") == "image"
    assert (value.image.width, value.image.height, value.image.colorspace) == (24, 16, 3)
    assert value.image.encoded_image_string == png.read_bytes()
    decoded = np.asarray(Image.open(BytesIO(value.image.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, pixels)


def test_resume_adds_a_file_with_a_session_start(tmp_path, events_tool, messages):
    first = json.loads(run([events_tool, tmp_path, "--scalars", 5]).stdout)
    second = json.loads(run([events_tool, tmp_path, "--scalars", 2, "--purge-step", 4]).stdout)
    assert first["path"] != second["path"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(first["path"]).name, Path(second["path"]).name])
    events = _events(messages, second["path"])
    assert events[0].file_version == "brain.Event:2"
    assert events[1].WhichOneof("what") == "session_log"
    assert events[1].step == 4
    assert events[1].session_log.status == messages["SessionLog"].SessionStatus.Value("START")


def test_a_killed_writer_leaves_every_record(tmp_path, events_tool, messages):
    process = subprocess.Popen([events_tool, str(tmp_path), "--scalars", "50", "--hold"],
                               stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(process.stdout.readline())
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    events = _events(messages, info["path"])
    assert len(events) == 1 + 50 + 1
    assert events[50].step == 50
