"""`fluxtrain merge`: LoRA merges and LoRAs baked into a base, checked against float64 references.

- concat merge (no --rank): merged ΔW = Σ wᵢ·ΔWᵢ per module, fp32 relative error ≤ 1e-6;
- --rank R: merged ΔW = the best rank-R approximation of Σ wᵢ·ΔWᵢ (torch.linalg.svd in float64), relative
  error ≤ 1e-5, and ‖merged − Σ‖_F = sqrt(Σ discarded σ²);
- bake: every changed weight = W + Σ sᵢ·ΔWᵢ (fp32 base: ≤ 1e-6; bf16 base: a correct bf16 rounding of the
  exact sum), every other tensor byte-identical, and fluxtrain's forward on the baked model = base + LoRA;
- errors: one readable line naming the file / module.

relative error = max|a − b| / max|b| per module. LoRAs are random on the tiny model of `make-tiny`
(hidden 128), written by the test tool (`lora-make`) or here in kohya format.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run


def rel_err(ours, ref):
    ref = ref.double()
    return float((ours.double() - ref).abs().max() / ref.abs().max())


def delta_weights(path):
    """module -> ΔW = alpha/r · up @ down in float64 (alpha 0 or missing -> r)."""
    sd = load_file(str(path))
    out = {}
    for key in sd:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        down, up = sd[key].double(), sd[name + ".lora_up.weight"].double()
        r = down.shape[0]
        alpha = float(sd[name + ".alpha"]) if name + ".alpha" in sd else 0.0
        out[name] = (alpha if alpha != 0 else r) / r * (up @ down)
    return out


def ranks(path):
    sd = load_file(str(path))
    return {k[: -len(".lora_down.weight")]: v.shape[0] for k, v in sd.items() if k.endswith(".lora_down.weight")}


def weighted_sum(*pairs):
    total = {}
    for deltas, w in pairs:
        for name, d in deltas.items():
            total[name] = total.get(name, 0) + w * d
    return total


def metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def data_area_sha256(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def write_lora(path, shapes, rank, seed, alpha=None, scale=0.05):
    """A kohya-format LoRA with random down and up on `shapes` (module -> (out, in))."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (n_out, n_in) in shapes.items():
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, n_in, generator=g) * scale
        sd[f"{name}.lora_up.weight"] = torch.randn(n_out, rank, generator=g) * scale
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fluxtrain_bin, test_tool):
    """The tiny model (bf16, and an fp32 copy), forward inputs, and LoRAs A (rank 4), B (rank 8, fused
    split_qkv), C (rank 2, alpha missing, only the single blocks)."""
    tmp = tmp_path_factory.mktemp("merge")
    run([fluxtrain_bin, "make-tiny", "--out", tmp, "--seed", "3"])
    base = tmp / "flux1-dev.safetensors"
    sd = load_file(str(base))
    base32 = tmp / "flux32.safetensors"
    save_file({k: v.float() for k, v in sd.items()}, str(base32))
    a = tmp / "a.safetensors"
    b = tmp / "b.safetensors"
    run([test_tool, "lora-make", base, a, "--rank", "4", "--alpha", "2", "--seed", "11", "--random-up", "1"])
    run([test_tool, "lora-make", base, b, "--rank", "4", "--alpha", "3", "--split-qkv", "1", "--seed", "12",
         "--random-up", "1"])
    shapes = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): tuple(v.shape)
              for k, v in sd.items() if k.startswith("single_blocks.") and v.dim() == 2}
    c = write_lora(tmp / "c.safetensors", shapes, rank=2, seed=13)
    g = torch.Generator().manual_seed(5)
    h, w, lt = 2, 3, 4
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    inputs = {"img": torch.randn(1, h * w, 64, generator=g), "img_ids": ids.reshape(1, h * w, 3),
              "txt": torch.randn(1, lt, sd["txt_in.weight"].shape[1], generator=g), "txt_ids": torch.zeros(1, lt, 3),
              "timesteps": torch.tensor([0.6]), "y": torch.randn(1, sd["vector_in.in_layer.weight"].shape[1], generator=g),
              "guidance": torch.tensor([3.5])}
    save_file(inputs, str(tmp / "inputs.safetensors"))
    return {"dir": tmp, "base": base, "base32": base32, "a": a, "b": b, "c": c, "inputs": tmp / "inputs.safetensors"}


def test_concat_merge_is_the_exact_weighted_sum(tiny, fluxtrain_bin):
    t = tiny
    out = t["dir"] / "concat.safetensors"
    run([fluxtrain_bin, "merge", "--lora", f"{t['a']}:0.7", "--lora", f"{t['b']}:-0.4", "--out", out])
    merged = delta_weights(out)
    ref = weighted_sum((delta_weights(t["a"]), 0.7), (delta_weights(t["b"]), -0.4))
    assert set(merged) == set(ref)
    worst = max(rel_err(merged[n], ref[n]) for n in ref)
    print(f"concat merge: {len(ref)} modules, worst relative error {worst:.2e}")
    assert worst <= 1e-6
    ra, rb = ranks(t["a"]), ranks(t["b"])
    assert ranks(out) == {n: ra[n] + rb[n] for n in ra}  # split_qkv modules of B have rank 12 / 16
    sd = load_file(str(out))
    assert all(float(sd[n + ".alpha"]) == ranks(out)[n] for n in ranks(out))  # scale 1
    assert all(v.dtype == torch.float32 for v in sd.values())
    meta = metadata(out)
    assert meta["ss_network_dim"] == "Dynamic" and meta["ss_network_alpha"] == "Dynamic"
    assert meta["fluxtrain.merge_mode"] == "concat"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_network_module"] == "networks.lora_flux"
    sources = json.loads(meta["fluxtrain.merged_from"])
    assert [(s["file"], s["weight"]) for s in sources] == [("a.safetensors", 0.7), ("b.safetensors", -0.4)]
    assert sources[0]["sshs_model_hash"] == metadata(t["a"])["sshs_model_hash"]
    assert meta["sshs_model_hash"] == data_area_sha256(out)

    # Two rank-4 LoRAs on the same modules: a uniform rank-8 file; modules of C only on single blocks.
    out2 = t["dir"] / "concat2.safetensors"
    run([fluxtrain_bin, "merge", "--lora", t["a"], "--lora", f"{t['a']}:0.25", "--out", out2])
    assert metadata(out2)["ss_network_dim"] == "8" and set(ranks(out2).values()) == {8}
    assert max(rel_err(d, 1.25 * delta_weights(t["a"])[n]) for n, d in delta_weights(out2).items()) <= 1e-6
    out3 = t["dir"] / "concat3.safetensors"
    run([fluxtrain_bin, "merge", "--lora", t["a"], "--lora", f"{t['c']}:2", "--out", out3])
    ref3 = weighted_sum((delta_weights(t["a"]), 1.0), (delta_weights(t["c"]), 2.0))
    merged3 = delta_weights(out3)
    assert set(merged3) == set(ref3) and max(rel_err(merged3[n], ref3[n]) for n in ref3) <= 1e-6
    assert {r for n, r in ranks(out3).items() if "single_blocks" in n} == {6}
    assert {r for n, r in ranks(out3).items() if "double_blocks" in n} == {4}


def test_rank_r_merge_is_the_best_rank_r_approximation(tiny, fluxtrain_bin):
    t = tiny
    rank = 5  # below every module's total rank (4 + 4..16 + 0..2)
    out = t["dir"] / f"svd{rank}.safetensors"
    weights = {"a": 0.8, "b": 0.5, "c": -1.5}
    run([fluxtrain_bin, "merge", *sum((["--lora", f"{t[k]}:{w}"] for k, w in weights.items()), []),
         "--rank", str(rank), "--out", out])
    ref = weighted_sum(*((delta_weights(t[k]), w) for k, w in weights.items()))
    merged = delta_weights(out)
    assert set(merged) == set(ref)
    assert set(ranks(out).values()) == {rank}
    worst = worst_fro = 0.0
    for name, total in ref.items():
        u, s, vh = torch.linalg.svd(total)
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        worst = max(worst, rel_err(merged[name], best))
        fro = float(torch.linalg.matrix_norm(merged[name] - total))
        discarded = float(s[rank:].square().sum().sqrt())
        worst_fro = max(worst_fro, abs(fro - discarded) / discarded)
    print(f"SVD merge to rank {rank}: worst relative error {worst:.2e}, Frobenius error vs sqrt(Σ discarded σ²) "
          f"{worst_fro:.2e}")
    assert worst <= 1e-5
    assert worst_fro <= 1e-5
    meta = metadata(out)
    assert meta["ss_network_dim"] == str(rank) and meta["ss_network_alpha"] == str(rank)
    assert meta["fluxtrain.merge_mode"] == "svd" and meta["sshs_model_hash"] == data_area_sha256(out)


def test_rank_above_the_inputs_total_keeps_it_exact(tiny, fluxtrain_bin):
    t = tiny
    out = t["dir"] / "svd_big.safetensors"
    run([fluxtrain_bin, "merge", "--lora", f"{t['a']}:0.5", "--lora", f"{t['c']}:1.5", "--rank", "32", "--dtype",
         "bf16", "--out", out])
    ref = weighted_sum((delta_weights(t["a"]), 0.5), (delta_weights(t["c"]), 1.5))
    merged = delta_weights(out)
    assert max(rel_err(merged[n], ref[n]) for n in ref) <= 2e-2  # bf16 storage
    assert {v.dtype for k, v in load_file(str(out)).items() if not k.endswith(".alpha")} == {torch.bfloat16}
    assert set(ranks(out).values()) == {4, 6} and metadata(out)["ss_network_dim"] == "Dynamic"


def changed_keys(lora_paths):
    names = set()
    for p in lora_paths:
        names |= set(delta_weights(p))
    return names


def test_bake_fp32_and_bf16_and_forward(tiny, fluxtrain_bin, test_tool):
    t = tiny
    loras = [(t["a"], 0.8), (t["b"], 0.5)]
    ref_deltas = weighted_sum(*((delta_weights(p), s) for p, s in loras))
    lora_args = sum((["--lora", f"{p}:{s}"] for p, s in loras), [])

    for base, tolerance in ((t["base32"], "fp32"), (t["base"], "bf16")):
        out = t["dir"] / f"baked_{tolerance}.safetensors"
        run([fluxtrain_bin, "merge", "--base", base, *lora_args, "--out", out])
        before, after = load_file(str(base)), load_file(str(out))
        assert {k: (v.dtype, v.shape) for k, v in after.items()} == {k: (v.dtype, v.shape) for k, v in before.items()}
        changed = same = total = 0
        worst = 0.0
        for key, w in before.items():
            name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
            if name not in ref_deltas:
                assert torch.equal(after[key], w), key
                continue
            changed += 1
            exact = w.double() + ref_deltas[name]
            if tolerance == "fp32":
                worst = max(worst, rel_err(after[key], exact))
            else:
                # A correct bf16 rounding of the exact sum: within half a bf16 ulp (8 significant bits),
                # plus fp32 noise in the sum (relative to its terms, not to the sum, which may cancel).
                ulp = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 7)
                noise = 1e-6 * (w.double().abs() + ref_deltas[name].abs())
                excess = ((after[key].double() - exact).abs() - (0.5 * ulp + noise)).max()
                assert float(excess) <= 0, key
                same += int((after[key] == exact.float().to(torch.bfloat16)).sum())
                total += exact.numel()
        assert changed == len(ref_deltas)
        print(f"bake {tolerance}: {changed} weights changed, " +
              (f"worst relative error {worst:.2e}" if tolerance == "fp32" else
               f"{same}/{total} values equal torch's bf16 rounding of the float64 sum, all within ½ ulp + fp32 noise"))
        if tolerance == "fp32":
            assert worst <= 1e-6
        baked_meta = json.loads(metadata(out)["fluxtrain.baked_loras"])
        assert [(m["file"], m["strength"]) for m in baked_meta] == [("a.safetensors", 0.8), ("b.safetensors", 0.5)]

    # fluxtrain's forward on the baked fp32 model (A at 0.8 and again at 0.5) = its forward with the exact
    # merge of the same two as a LoRA (one network needs one rank: 4 + 4).
    merged = t["dir"] / "for_forward.safetensors"
    run([fluxtrain_bin, "merge", "--lora", f"{t['a']}:0.8", "--lora", f"{t['a']}:0.5", "--out", merged])
    baked = t["dir"] / "baked_forward.safetensors"
    run([fluxtrain_bin, "merge", "--base", t["base32"], "--lora", f"{t['a']}:0.8", "--lora", f"{t['a']}:0.5",
         "--out", baked])
    lora_out, baked_out = t["dir"] / "lora_out.safetensors", t["dir"] / "baked_out.safetensors"
    run([test_tool, "lora-forward", t["base32"], merged, t["inputs"], lora_out, "--rank", "8"])
    info = json.loads(run([test_tool, "flux-forward", baked, t["inputs"], baked_out]).stdout)
    assert info["layout"] == "bfl" and info["unused"] == 0
    base_out = t["dir"] / "base_out.safetensors"
    run([test_tool, "flux-forward", t["base32"], t["inputs"], base_out])
    ours, ref, plain = (load_file(str(p))["out"] for p in (baked_out, lora_out, base_out))
    err = rel_err(ours, ref)
    print(f"forward: baked vs base+LoRA relative error {err:.2e} (LoRA's own effect {rel_err(plain, ref):.2e})")
    assert err <= 1e-5
    assert rel_err(plain, ref) > 100 * err  # the LoRA changes the output far more than the tolerance


def test_bake_fp8_and_prefix_and_dtype(tiny, fluxtrain_bin, test_tool):
    t = tiny
    sd = load_file(str(t["base"]))
    # A merged-checkpoint layout with the ComfyUI prefix, fp8 block weights.
    fp8 = {("model.diffusion_model." + k): (v.to(torch.float8_e4m3fn) if k.split(".")[0] in ("double_blocks", "single_blocks")
                                            and v.dim() == 2 else v) for k, v in sd.items()}
    base = t["dir"] / "fp8_prefixed.safetensors"
    save_file(fp8, str(base))
    out = t["dir"] / "baked_fp8.safetensors"
    result = run([fluxtrain_bin, "merge", "--base", base, "--lora", f"{t['a']}:4", "--out", out])
    assert "fp8" in result.stderr and "rounding error" in result.stderr
    after = load_file(str(out))
    deltas = delta_weights(t["a"])
    changed = 0
    for key, w in fp8.items():
        name = "lora_unet_" + key[len("model.diffusion_model."): -len(".weight")].replace(".", "_")
        assert after[key].dtype == w.dtype, key
        if name not in deltas:
            assert torch.equal(after[key].view(torch.uint8) if w.dtype == torch.float8_e4m3fn else after[key],
                               w.view(torch.uint8) if w.dtype == torch.float8_e4m3fn else w), key
            continue
        changed += 1
        # A correct e4m3fn rounding of the (clamped) exact sum: within half an fp8 ulp (4 significant bits;
        # subnormal below 2^-6), plus fp32 noise in the sum.
        exact = (w.double() + 4 * deltas[name]).clamp(-448, 448)
        ulp = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(2.0**-6))) - 3)
        noise = 1e-6 * (w.double().abs() + 4 * deltas[name].abs())
        excess = ((after[key].double() - exact).abs() - (0.5 * ulp + noise)).max()
        assert float(excess) <= 0, key
    assert changed == len(deltas)
    info = json.loads(run([test_tool, "flux-forward", out, t["inputs"], t["dir"] / "fp8_out.safetensors", "--fp8", "1"]).stdout)
    assert info["prefix"] == "model.diffusion_model." and info["unused"] == 0

    # --dtype fp8 on a bf16 base: block matrices become fp8, the rest stays bf16; --dtype fp32: all fp32.
    out8 = t["dir"] / "baked_to_fp8.safetensors"
    run([fluxtrain_bin, "merge", "--base", t["base"], "--lora", t["a"], "--dtype", "fp8", "--out", out8])
    for key, v in load_file(str(out8)).items():
        block_matrix = key.split(".")[0] in ("double_blocks", "single_blocks") and v.dim() == 2
        assert v.dtype == (torch.float8_e4m3fn if block_matrix else torch.bfloat16), key
    out32 = t["dir"] / "baked_to_fp32.safetensors"
    run([fluxtrain_bin, "merge", "--base", t["base"], "--lora", t["a"], "--dtype", "fp32", "--out", out32])
    assert {v.dtype for v in load_file(str(out32)).values()} == {torch.float32}


def error_of(fluxtrain_bin, *args):
    result = run([fluxtrain_bin, "merge", *args], check=False)
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    return result.stderr


def test_errors(tiny, fluxtrain_bin, tmp_path):
    t = tiny
    out = tmp_path / "out.safetensors"
    assert "does not exist" in error_of(fluxtrain_bin, "--lora", tmp_path / "nope.safetensors", "--out", out)
    msg = error_of(fluxtrain_bin, "--lora", t["base"], "--out", out)
    assert "not a kohya-format LoRA" in msg and "--base" in msg
    assert "--rank must be a positive rank" in error_of(fluxtrain_bin, "--lora", t["a"], "--rank", "0", "--out", out)
    assert "is not a number" in error_of(fluxtrain_bin, "--lora", f"{t['a']}:abc", "--out", out)
    assert "one of the inputs" in error_of(fluxtrain_bin, "--lora", t["a"], "--lora", t["b"], "--out", t["b"])
    assert "--rank applies to LoRA merges" in error_of(fluxtrain_bin, "--base", t["base"], "--lora", t["a"],
                                                      "--rank", "4", "--out", out)
    assert "not a weight dtype" in error_of(fluxtrain_bin, "--base", t["base"], "--lora", t["a"], "--dtype", "int8",
                                            "--out", out)
    # Different models: a module with another input width.
    other = write_lora(tmp_path / "other.safetensors", {"lora_unet_single_blocks_0_linear2": (96, 100)}, 2, 1)
    msg = error_of(fluxtrain_bin, "--lora", t["a"], "--lora", other, "--out", out)
    assert "lora_unet_single_blocks_0_linear2" in msg and "[96, 100]" in msg and "different models" in msg
    msg = error_of(fluxtrain_bin, "--base", t["base"], "--lora", other, "--out", out)
    assert "lora_unet_single_blocks_0_linear2" in msg and "different model" in msg
    # Modules the base does not have.
    stray = write_lora(tmp_path / "stray.safetensors", {"lora_unet_single_blocks_9_linear2": (96, 480),
                                                        "lora_unet_input_blocks_1_proj": (8, 8)}, 2, 1)
    msg = error_of(fluxtrain_bin, "--base", t["base"], "--lora", stray, "--out", out)
    assert "2 LoRA modules match no 2-D weight" in msg and "lora_unet_input_blocks_1_proj" in msg
    # Not plain kohya LoRAs.
    peft = tmp_path / "peft.safetensors"
    save_file({"transformer.single_transformer_blocks.0.proj_out.lora_A.weight": torch.zeros(2, 8)}, str(peft))
    assert "PEFT" in error_of(fluxtrain_bin, "--lora", peft, "--out", out)
    broken = tmp_path / "broken.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 3)},
              str(broken))
    assert "ranks (down rows, up columns) must agree" in error_of(fluxtrain_bin, "--lora", broken, "--out", out)
    assert not out.exists()

    # An existing output is replaced (atomically).
    out.write_bytes(b"old")
    run([fluxtrain_bin, "merge", "--lora", t["a"], "--out", out])
    assert set(delta_weights(out)) == set(delta_weights(t["a"]))


def peak_rss_mib(peak_rss_tool, *args):
    result = run([peak_rss_tool, *args])
    return int(result.stderr.strip().splitlines()[-1].split()[-1]) / 1024


def test_bake_streams_tensor_by_tensor(tmp_path, fluxtrain_bin, peak_rss_tool):
    """Baking a 256 MB base costs much less than its size in extra memory (a 23 GB checkpoint must not
    need 2 × 23 GB): the base is mapped and streamed, each tensor's pages dropped after it is written."""
    def write_base(path, n):
        g = torch.Generator().manual_seed(0)
        save_file({f"double_blocks.{i}.img_mlp.0.weight": torch.randn(n, n, generator=g) for i in range(16)}, str(path))
        shapes = {f"lora_unet_double_blocks_{i}_img_mlp_0": (n, n) for i in range(0, 16, 3)}
        return write_lora(tmp_path / f"lora{n}.safetensors", shapes, rank=4, seed=1)

    small_lora, big_lora = write_base(tmp_path / "small.safetensors", 64), write_base(tmp_path / "big.safetensors", 2048)
    small = peak_rss_mib(peak_rss_tool, fluxtrain_bin, "merge", "--base", tmp_path / "small.safetensors", "--lora",
                         small_lora, "--out", tmp_path / "small_out.safetensors")
    big = peak_rss_mib(peak_rss_tool, fluxtrain_bin, "merge", "--base", tmp_path / "big.safetensors", "--lora",
                       big_lora, "--out", tmp_path / "big_out.safetensors")
    size_mib = (tmp_path / "big.safetensors").stat().st_size / 2**20
    print(f"bake peak RSS: {small:.0f} MiB for a 256 KB base, {big:.0f} MiB for a {size_mib:.0f} MiB base "
          f"(+{big - small:.0f} MiB; largest tensor 16 MiB)")
    assert big - small < 0.5 * size_mib
    after = load_file(str(tmp_path / "big_out.safetensors"))
    assert torch.equal(after["double_blocks.1.img_mlp.0.weight"],
                       load_file(str(tmp_path / "big.safetensors"))["double_blocks.1.img_mlp.0.weight"])
