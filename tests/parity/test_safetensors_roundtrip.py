"""safetensors files between fluxtrain (C++) and the reference Python `safetensors` package: every
dtype, metadata, bit-exact in both directions."""
from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def fnv1a(t: torch.Tensor) -> int:
    h = 1469598103934665603
    for b in t.contiguous().reshape(-1).view(torch.uint8).tolist():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def random_bits(shape, dtype, g):
    """Every bit pattern is fair game (NaN, inf, subnormals), except bool which holds 0/1."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * itemsize), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype)


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def test_python_writes_cpp_reads_and_writes_back(tmp_path, test_tool):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    tensors = {f"t_{name}": random_bits((3, 5, 7), dtype, g) for name, dtype in DTYPES.items()}
    tensors["big_bf16"] = random_bits((1024, 2048), torch.bfloat16, g)  # > write buffer
    tensors["scalar"] = torch.tensor(0.125, dtype=torch.float32)
    tensors["empty"] = torch.zeros((0, 3), dtype=torch.float16)
    metadata = {"format": "pt", "ss_network_dim": "16", "unicode": "Grüße ✓ 日本", "json": '{"a": [1, 2]}'}
    src = tmp_path / "python.safetensors"
    dst = tmp_path / "cpp.safetensors"
    save_file(tensors, str(src), metadata=metadata)

    report = json.loads(run([test_tool, "st-copy", src, dst]).stdout)
    assert set(report) == set(tensors)
    for name, t in tensors.items():
        r = report[name]
        assert r["shape"] == list(t.shape), name
        if t.numel() <= 1000:
            assert int(r["bytes_fnv"]) == fnv1a(t), name
        d = t.to(torch.float64)
        finite = torch.isfinite(d)
        assert r["nonfinite"] == int((~finite).sum()), name
        assert math.isclose(r["sum"], float(torch.where(finite, d, 0).sum()), rel_tol=1e-12, abs_tol=1e-300), name

    back = load_file(str(dst))
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype, name
        assert back[name].shape == t.shape, name
        assert torch.equal(back[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
    with safe_open(str(dst), "pt") as f:
        assert f.metadata() == metadata


def sample_tensor(name: str) -> torch.Tensor:
    """The pattern fluxtrain_test_tool st-write-sample writes (same formula as tools/test_tool.cpp)."""
    dtype = DTYPES[name]
    v = ((torch.arange(30, dtype=torch.int64) * 37) % 251) - 125
    if dtype == torch.bool:
        out = v.remainder(2) == 1
    elif dtype.is_floating_point:
        out = (v.to(torch.float64) / 8.0).to(dtype)
    elif dtype == torch.uint8:
        out = (v + 125).to(dtype)
    else:
        out = v.to(dtype)
    return out.reshape(2, 3, 5)


def test_cpp_writes_python_reads(tmp_path, test_tool):
    path = tmp_path / "sample.safetensors"
    run([test_tool, "st-write-sample", path])
    loaded = load_file(str(path))
    for name in DTYPES:
        got, want = loaded[f"t_{name}"], sample_tensor(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name
    assert loaded["scalar"].shape == () and loaded["scalar"].item() == 2.5
    assert loaded["empty"].shape == (0, 4)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt", "writer": "fluxtrain", "unicode": "Grüße ✓"}

    # Layout: data area 8-byte aligned, every tensor aligned to its element size, no gaps.
    n, header = header_of(path)
    assert (8 + n) % 8 == 0
    end = 0
    for name, entry in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                              key=lambda kv: kv[1]["data_offsets"]):
        begin, stop = entry["data_offsets"]
        size = torch.empty((), dtype=DTYPES[entry["dtype"]]).element_size()
        assert begin == end and begin % size == 0, name
        end = stop
    assert 8 + n + end == path.stat().st_size


@pytest.mark.parametrize("corruption", ["truncate", "bad_json", "huge_length", "overlap", "duplicate"])
def test_corrupt_files_rejected_by_the_cli(tmp_path, fluxtrain_bin, corruption):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(4)}, str(path))
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + n].decode()
    expected = {
        "truncate": "incomplete download",
        "bad_json": "not valid JSON",
        "huge_length": "not a safetensors file",
        "overlap": "overlap",
        "duplicate": "appears twice",
    }[corruption]
    if corruption == "truncate":
        data = data[:-5]
    elif corruption == "bad_json":
        data[8 + 1] = ord("!")
    elif corruption == "huge_length":
        data[:8] = struct.pack("<Q", 1 << 60)
    elif corruption == "overlap":
        header = header.replace('"data_offsets":[16,32]', '"data_offsets":[8,24]')
        data = bytearray(struct.pack("<Q", len(header)) + header.encode() + data[8 + n:])
    elif corruption == "duplicate":
        dup = header.rstrip()[:-1] + ',"a":{"dtype":"F32","shape":[0],"data_offsets":[32,32]}}'
        data = bytearray(struct.pack("<Q", len(dup)) + dup.encode() + data[8 + n:])
    path.write_bytes(bytes(data))
    result = run([fluxtrain_bin, "inspect", path], check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0] and expected in lines[0], lines[0]
