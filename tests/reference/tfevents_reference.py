"""TensorBoard event files read by TensorBoard's own code (tensorboard, pinned in requirements-test.txt;
without TensorFlow installed it uses its pure-Python record reader, the one `tensorboard --logdir` uses
then too). Used by tests/parity/test_tfevents.py and the run tests that look at a run's events.

- Framing: `event_file_loader.RawEventFileLoader` reads the TFRecords (length, masked CRC-32C of the
  length, data, masked CRC-32C of the data) and checks both CRCs. It stops silently at a bad CRC or a
  truncated record (a writer may still be appending), so `read_events` also requires the records it
  returned to cover the whole file: a record TensorBoard would drop fails the test instead.
- Messages: `tensorboard.compat.proto.event_pb2.Event` (TensorBoard's compiled event.proto/summary.proto)
  parses each record, and re-serialising it must give the same bytes (fluxtrain writes protobuf's own
  canonical encoding, with nothing unknown to TensorBoard).
"""
from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2

SessionLog = event_pb2.SessionLog


def read_events(path) -> list[event_pb2.Event]:
    records = list(RawEventFileLoader(str(path)).Load())
    size = Path(path).stat().st_size
    framed = sum(8 + 4 + len(body) + 4 for body in records)
    assert framed == size, (f"{path}: TensorBoard's reader stopped after {len(records)} records, at byte {framed} "
                            f"of {size} (a bad CRC or a truncated record there)")
    events = []
    for body in records:
        event = event_pb2.Event.FromString(body)
        assert event.SerializeToString(deterministic=True) == body, "not protobuf's own serialization"
        events.append(event)
    return events


def accumulate(path) -> EventAccumulator:
    """TensorBoard's EventAccumulator (what its scalar and image dashboards read) over one file or a
    folder, keeping every event (size guidance 0 = no sampling)."""
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator
