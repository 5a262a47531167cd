"""`fluxtrain inspect` as a user runs it, on model files in the real layouts written by Python."""
from __future__ import annotations

import json
import math
import time

import torch
from safetensors.torch import save_file

from conftest import run
from reference import tiny_models as tm


def inspect_json(fluxtrain_bin, path):
    return json.loads(run([fluxtrain_bin, "inspect", "--json", path]).stdout)


def test_tiny_model_sets(tmp_path, fluxtrain_bin):
    for schnell in (False, True):
        out = tmp_path / ("schnell" if schnell else "dev")
        paths = tm.write_tiny_set(str(out), schnell=schnell, seed=int(time.time()) % 1000)
        flux = inspect_json(fluxtrain_bin, paths["flux1-schnell.safetensors" if schnell else "flux1-dev.safetensors"])
        shapes = tm.flux_shapes(tm.TINY_FLUX if not schnell else tm.replace(tm.TINY_FLUX, guidance_embed=False))
        assert flux["tensors"] == len(shapes)
        assert flux["parameters"] == sum(math.prod(s) for s in shapes.values())
        assert flux["dtypes"] == {"BF16": len(shapes)}
        (c,) = flux["components"]
        assert c["kind"] == "flux-transformer"
        assert c["details"]["variant"] == ("schnell" if schnell else "dev")
        assert c["details"]["double_blocks"] == "2" and c["details"]["single_blocks"] == "3"
        f = tm.TINY_FLUX
        assert c["details"]["hidden_size"] == str(f.hidden_size) and c["details"]["num_heads"] == str(f.num_heads)
        assert c["details"]["context_in_dim"] == str(f.context_in_dim)
        assert c["details"]["vec_in_dim"] == str(f.vec_in_dim)

    ae = inspect_json(fluxtrain_bin, out / "ae.safetensors")["components"][0]
    assert ae["kind"] == "flux-ae" and ae["details"]["z_channels"] == "16" and ae["details"]["ch"] == "32"
    clip = inspect_json(fluxtrain_bin, out / "clip_l.safetensors")["components"][0]
    assert clip["kind"] == "clip-text" and clip["details"]["hidden_size"] == str(tm.TINY_CLIP.hidden_size)
    assert clip["details"]["layers"] == "2"
    t5 = inspect_json(fluxtrain_bin, out / "t5xxl_fp16.safetensors")
    assert t5["components"][0]["kind"] == "t5-encoder"
    assert t5["components"][0]["details"]["duplicate_embedding"] == "true"
    assert t5["tensors"] == 22

    text = run([fluxtrain_bin, "inspect", out / "ae.safetensors"]).stdout
    assert "Flux-architecture autoencoder" in text and "tensors     176" in text and "format: pt" in text


def test_kohya_lora_and_merged_checkpoint(tmp_path, fluxtrain_bin):
    lora = {}
    for name, (n_out, n_in) in {"double_blocks_0_img_attn_qkv": (384, 128), "single_blocks_1_linear1": (896, 128)}.items():
        lora[f"lora_unet_{name}.lora_down.weight"] = torch.randn(8, n_in)
        lora[f"lora_unet_{name}.lora_up.weight"] = torch.zeros(n_out, 8)
        lora[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    save_file(lora, str(tmp_path / "lora.safetensors"), metadata={"ss_network_dim": "8"})
    info = inspect_json(fluxtrain_bin, tmp_path / "lora.safetensors")
    (c,) = info["components"]
    assert c["kind"] == "lora-kohya"
    assert (c["details"]["modules"], c["details"]["rank"], c["details"]["alpha"]) == ("2", "8", "4")
    assert info["metadata"] == {"ss_network_dim": "8"}

    merged = {}
    for prefix, shapes in (("model.diffusion_model.", tm.flux_shapes(tm.TINY_FLUX)), ("vae.", tm.ae_shapes(tm.TINY_AE)),
                           ("text_encoders.clip_l.transformer.", tm.clip_shapes(tm.TINY_CLIP))):
        for name, shape in shapes.items():
            merged[prefix + name] = torch.zeros(shape, dtype=torch.float16)
    save_file(merged, str(tmp_path / "merged.safetensors"))
    kinds = {c["prefix"]: c["kind"] for c in inspect_json(fluxtrain_bin, tmp_path / "merged.safetensors")["components"]}
    assert kinds == {"model.diffusion_model.": "flux-transformer", "vae.": "flux-ae",
                     "text_encoders.clip_l.transformer.": "clip-text"}


def test_two_gigabyte_file_answers_from_the_header(tmp_path, fluxtrain_bin, peak_rss_tool):
    """Peak RSS must stay under 100 MB (the file is never read beyond its header); time is reported."""
    path = tmp_path / "big.safetensors"
    shapes = tm.flux_shapes(tm.replace(tm.TINY_FLUX, hidden_size=1536, num_heads=12, context_in_dim=4096,
                                       vec_in_dim=768, depth=8, depth_single_blocks=10))
    tensors = {name: torch.empty(shape, dtype=torch.bfloat16) for name, shape in shapes.items()}
    save_file(tensors, str(path))
    size = path.stat().st_size
    assert size > 2e9, size
    del tensors
    start = time.perf_counter()
    result = run([peak_rss_tool, fluxtrain_bin, "inspect", path])
    elapsed = time.perf_counter() - start
    assert "Flux-architecture dev transformer" in result.stdout
    peak_mb = int(result.stderr.strip().splitlines()[-1].split()[-1]) / 1024
    print(f"\ninspect of a {size / 1e9:.2f} GB file: {elapsed * 1000:.0f} ms, peak RSS {peak_mb:.1f} MB")
    assert peak_mb < 100, peak_mb


def test_hostile_header_nested_100000_deep_is_a_short_named_error(tmp_path, fluxtrain_bin):
    """A header of 100,000 nested arrays (it overflowed the stack before the depth check) and one whose tensor
    entry quotes a huge value: each is one short line naming the file, exit 1, never a crash."""
    import struct
    depth = 100_000
    headers = {
        "deep.safetensors": b'{"a":' + b"[" * depth + b"]" * depth + b"}",
        "deep-shape.safetensors": b'{"w":{"dtype":"F32","shape":' + b"[" * depth + b"]" * depth
                                  + b',"data_offsets":[0,0]}}',
        "huge-value.safetensors": b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[' + b"1," * 200_000 + b"1]}}",
    }
    for name, header in headers.items():
        path = tmp_path / name
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        for args in (["inspect", path], ["inspect", "--json", path]):
            result = run([fluxtrain_bin, *args], check=False)
            assert result.returncode == 1, (name, result.returncode, result.stderr[-500:])
            message = result.stderr.strip()
            assert str(path) in message and len(message) < 500, message
            expected = "[begin, end]" if name.startswith("huge") else "nested deeper than 64 levels"
            assert expected in message, message
