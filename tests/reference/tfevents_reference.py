"""TensorBoard event files read by a reference decoder: Google's protobuf with the Event, SessionLog and
Summary messages declared at run time (field numbers, types and oneofs of tensorboard/compat/proto/
event.proto and summary.proto), and the TFRecord framing checked with a CRC-32C written from its
definition. Used by tests/parity/test_tfevents.py and the run tests that look at a run's events."""
from __future__ import annotations

import struct
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _field(message, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None, oneof=None):
    field = message.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof


def event_messages():
    """Event, Summary and SessionLog as declared in tensorboard/compat/proto/{event,summary}.proto."""
    fdp = descriptor_pb2.FileDescriptorProto(name="fluxtrain_test_event.proto", package="tb", syntax="proto3")

    summary = fdp.message_type.add(name="Summary")
    image = summary.nested_type.add(name="Image")
    _field(image, "height", 1, F.TYPE_INT32)
    _field(image, "width", 2, F.TYPE_INT32)
    _field(image, "colorspace", 3, F.TYPE_INT32)
    _field(image, "encoded_image_string", 4, F.TYPE_BYTES)
    value = summary.nested_type.add(name="Value")
    value.oneof_decl.add(name="value")
    _field(value, "node_name", 7, F.TYPE_STRING)
    _field(value, "tag", 1, F.TYPE_STRING)
    _field(value, "simple_value", 2, F.TYPE_FLOAT, oneof=0)
    _field(value, "obsolete_old_style_histogram", 3, F.TYPE_BYTES, oneof=0)
    _field(value, "image", 4, F.TYPE_MESSAGE, type_name=".tb.Summary.Image", oneof=0)
    _field(summary, "value", 1, F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".tb.Summary.Value")

    session_log = fdp.message_type.add(name="SessionLog")
    status = session_log.enum_type.add(name="SessionStatus")
    for name, number in (("STATUS_UNSPECIFIED", 0), ("START", 1), ("STOP", 2), ("CHECKPOINT", 3)):
        status.value.add(name=name, number=number)
    _field(session_log, "status", 1, F.TYPE_ENUM, type_name=".tb.SessionLog.SessionStatus")
    _field(session_log, "checkpoint_path", 2, F.TYPE_STRING)
    _field(session_log, "msg", 3, F.TYPE_STRING)

    event = fdp.message_type.add(name="Event")
    event.oneof_decl.add(name="what")
    _field(event, "wall_time", 1, F.TYPE_DOUBLE)
    _field(event, "step", 2, F.TYPE_INT64)
    _field(event, "file_version", 3, F.TYPE_STRING, oneof=0)
    _field(event, "graph_def", 4, F.TYPE_BYTES, oneof=0)
    _field(event, "summary", 5, F.TYPE_MESSAGE, type_name=".tb.Summary", oneof=0)
    _field(event, "session_log", 7, F.TYPE_MESSAGE, type_name=".tb.SessionLog", oneof=0)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tb.{name}"))
            for name in ("Event", "SessionLog")}


def _records(data: bytes) -> list[bytes]:
    records, pos = [], 0
    while pos < len(data):
        assert pos + 12 <= len(data), f"truncated header at byte {pos}"
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        assert length_crc == _masked(data[pos:pos + 8]), f"bad length CRC at byte {pos}"
        body = data[pos + 12:pos + 12 + length]
        assert len(body) == length, f"truncated record at byte {pos}"
        (data_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        assert data_crc == _masked(body), f"bad data CRC at byte {pos}"
        records.append(body)
        pos += 16 + length
    return records


def read_events(messages, path) -> list:
    events = []
    for body in _records(Path(path).read_bytes()):
        event = messages["Event"]()
        event.ParseFromString(body)
        assert event.SerializeToString(deterministic=True) == body, "not protobuf's own serialization"
        events.append(event)
    return events
