"""`fluxtrain sample` against a Python reference pipeline, pixel for pixel, on a tiny model set.

The sampling steps are a transcription, written here from black-forest-labs/flux src/flux/sampling.py (BFL's
repository is not a package on PyPI): get_noise on a CPU generator, get_schedule with get_lin_function and
time_shift (the dev shift), the Euler loop of denoise, unpack; true CFG as diffusers' FluxPipeline does it
(neg + scale * (pos - neg)). The networks are the packages: diffusers' FluxTransformer2DModel and
AutoencoderKL and transformers' CLIPTextModel / T5EncoderModel holding the same tiny weights, all in fp32
on the CPU. Prompts are tokenized with tokenize_tool (fluxtrain's tokenizers, equal to transformers' id for id: tests/parity/test_tokenizers.py).

Pixels: |ours - reference| ≤ 1 level everywhere, and at most 0.5% of the values differ at all (a value
near a rounding boundary may round the other way after fp32 differences of ~1e-6).

LoRAs are applied in the reference by adding scale * B @ A to the diffusers model's own weights (to_q, to_k,
to_v, proj_mlp, norm_out, ...), so the check covers fluxtrain's diffusers -> BFL mapping (fused qkv /
linear1 row ranges, norm_out's swapped halves). The same LoRA is written in diffusers/PEFT, kohya and
ComfyUI layouts; each must give the reference's picture.
"""
from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import run
from train_env import comfyui_graph
from reference import flux_reference as fr
from reference import tiny_models as tm
from reference.ae_reference import reference_model as ae_reference_model

W, H = 64, 48  # 6 x 8 latent, 3 x 4 = 12 image tokens
STEPS = 4
MAX_DIFFERENT = 0.005


# --- the reference pipeline ---------------------------------------------------------------------------

def get_schedule(steps: int, image_tokens: int, shift: bool) -> list[float]:
    """BFL's get_schedule (src/flux/sampling.py), transcribed: linspace(1, 0, steps + 1), shifted by
    time_shift(mu, 1, t) with mu = get_lin_function(256 -> 0.5, 4096 -> 1.15)(image_tokens)."""
    t = torch.linspace(1, 0, steps + 1)
    if shift:
        m = (1.15 - 0.5) / (4096 - 256)
        mu = m * image_tokens + (0.5 - m * 256)
        t = math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)
    return t.tolist()


class Reference:
    def __init__(self, folder, tokenize_tool, schnell=False):
        from transformers import CLIPTextConfig, CLIPTextModel

        self.schnell = schnell
        self.flux_cfg = tm.replace(tm.TINY_FLUX, guidance_embed=not schnell)
        name = "flux1-schnell.safetensors" if schnell else "flux1-dev.safetensors"
        self.flux_sd = {k: v.float() for k, v in load_file(str(folder / name)).items()}
        self.ae = ae_reference_model({k: v.float() for k, v in load_file(str(folder / "ae.safetensors")).items()})
        c = tm.TINY_CLIP
        config = CLIPTextConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                                num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                                max_position_embeddings=c.max_position_embeddings, hidden_act="quick_gelu",
                                layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407)
        self.clip = CLIPTextModel(config).eval()
        self.clip.load_state_dict({k.removeprefix("text_model."): v.float()
                                   for k, v in load_file(str(folder / "clip_l.safetensors")).items()}, strict=False)
        self.t5 = tm.transformers_t5(folder / "t5xxl_fp16.safetensors")
        self.tokenize_tool = tokenize_tool

    def encode(self, text: str):
        length = 256 if self.schnell else 512
        answer = subprocess.run([self.tokenize_tool], input=json.dumps({"text": text, "max_length": length}) + "\n",
                                capture_output=True, text=True, check=True)
        ids = json.loads(answer.stdout)
        with torch.no_grad():
            y = self.clip(input_ids=torch.tensor([ids["clip"]])).pooler_output
            txt = self.t5(input_ids=torch.tensor([ids["t5"]])).last_hidden_state
        return txt, y

    def transformer(self, lora=None, strength=1.0):
        """diffusers' transformer; `lora` = {diffusers module: (A, B, scale)} added to its weights."""
        model = fr.diffusers_model(self.flux_cfg, self.flux_sd)
        with torch.no_grad():
            for name, (a, b, scale) in (lora or {}).items():
                model.get_submodule(name).weight += strength * scale * (b @ a)
        return model

    def image(self, model, prompt, seed, negative="", guidance=3.5, cfg=1.0, width=W, height=H, steps=STEPS):
        txt, y = self.encode(prompt)
        neg = self.encode(negative) if cfg != 1.0 else None
        h, w = 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)
        x = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        img = x.reshape(1, 16, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, (h // 2) * (w // 2), 64)
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] = torch.arange(h // 2)[:, None]
        ids[..., 2] = torch.arange(w // 2)[None, :]
        img_ids = ids.reshape(-1, 3)
        txt_ids = torch.zeros(txt.shape[1], 3)
        gvec = None if self.schnell else torch.full((1,), guidance)
        timesteps = get_schedule(steps, img.shape[1], shift=not self.schnell)
        with torch.no_grad():
            for t_curr, t_prev in zip(timesteps[:-1], timesteps[1:]):
                t_vec = torch.full((1,), t_curr, dtype=img.dtype)

                def v(c_txt, c_y):
                    return model(hidden_states=img, encoder_hidden_states=c_txt, pooled_projections=c_y,
                                 timestep=t_vec, img_ids=img_ids, txt_ids=txt_ids, guidance=gvec, return_dict=False)[0]

                pred = v(txt, y)
                if neg is not None:
                    pred_neg = v(*neg)
                    pred = pred_neg + cfg * (pred - pred_neg)
                img = img + (t_prev - t_curr) * pred
            z = img.reshape(1, h // 2, w // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, h, w)
            a = tm.TINY_AE
            pixels = self.ae.decode(z / a.scale_factor + a.shift_factor).sample
        pixels = ((pixels.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return pixels[0].permute(1, 2, 0).numpy()


def compare(path, want):
    got = np.asarray(Image.open(path).convert("RGB"))
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, f"{path}: max difference {diff.max()} levels"
    assert (diff > 0).mean() <= MAX_DIFFERENT, f"{path}: {(diff > 0).mean():.4f} of the values differ"
    return got


def not_flat(image):
    # A picture, not a constant or saturated one: the comparison would be weak otherwise.
    assert image.std() > 2 and ((image > 0) & (image < 255)).mean() > 0.5


# --- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev(tmp_path_factory, fluxtrain_bin, tokenize_tool):
    folder = tmp_path_factory.mktemp("dev")
    run([fluxtrain_bin, "make-tiny", "--out", folder, "--seed", "11"])
    return folder, Reference(folder, tokenize_tool)


def sample(fluxtrain_bin, folder, out, *args, check=True):
    return run([fluxtrain_bin, "sample", "--model-dir", folder, "--out", out, "--device", "cpu", "--precision", "fp32",
                *args], check=check)


def random_lora(cfg, seed, rank=4):
    """A LoRA in diffusers naming: {module: (A [r, in], B [out, r], alpha or None)}."""
    g = torch.Generator().manual_seed(seed)
    h, m = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
    shapes = {
        "transformer_blocks.0.attn.to_q": (h, h), "transformer_blocks.0.attn.to_k": (h, h),
        "transformer_blocks.0.attn.to_v": (h, h), "transformer_blocks.1.attn.add_k_proj": (h, h),
        "transformer_blocks.0.attn.to_out.0": (h, h), "transformer_blocks.1.ff.net.0.proj": (4 * h, h),
        "transformer_blocks.0.ff_context.net.2": (h, 4 * h), "transformer_blocks.1.norm1.linear": (6 * h, h),
        "single_transformer_blocks.0.attn.to_q": (h, h), "single_transformer_blocks.0.attn.to_k": (h, h),
        "single_transformer_blocks.0.attn.to_v": (h, h), "single_transformer_blocks.0.proj_mlp": (m, h),
        "single_transformer_blocks.2.attn.to_v": (h, h), "single_transformer_blocks.1.proj_out": (h, h + m),
        "single_transformer_blocks.2.norm.linear": (3 * h, h), "norm_out.linear": (2 * h, h),
        "context_embedder": (h, cfg.context_in_dim),
    }
    out = {}
    for i, (name, (rows, cols)) in enumerate(sorted(shapes.items())):
        a = torch.randn(rank, cols, generator=g) / math.sqrt(cols)
        b = torch.randn(rows, rank, generator=g) * 0.3
        # Some modules with an alpha (scale alpha/rank), some without (scale 1); fused modules share a scale.
        alpha = None if ("single_transformer_blocks.0" in name or "transformer_blocks.0.attn.to_" in name or i % 2) else 2.0
        out[name] = (a, b, alpha)
    return out


def as_reference(lora):
    return {n: (a, b, 1.0 if alpha is None else alpha / a.shape[0]) for n, (a, b, alpha) in lora.items()}


def write_diffusers(lora, path):
    sd = {}
    for name, (a, b, alpha) in lora.items():
        sd[f"transformer.{name}.lora_A.weight"] = a.contiguous()
        sd[f"transformer.{name}.lora_B.weight"] = b.contiguous()
        if alpha is not None:
            sd[f"transformer.{name}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path))


def to_bfl(lora, cfg):
    """The same LoRA fused onto BFL modules: down = cat(A parts), up = block-diagonal at the parts' rows,
    alpha = scale * total rank (so kohya's alpha / rank is each part's scale)."""
    h, m = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
    targets = {}
    for name, (a, b, alpha) in lora.items():
        scale = 1.0 if alpha is None else alpha / a.shape[0]
        parts = name.split(".")
        if name == "context_embedder":
            bfl, offset, rows = "txt_in", 0, h
        elif name == "norm_out.linear":
            bfl, offset, rows = "final_layer.adaLN_modulation.1", 0, 2 * h
            b = torch.cat([b[h:], b[:h]])  # [scale, shift] -> [shift, scale]
        elif parts[0] == "transformer_blocks":
            i, rest = parts[1], ".".join(parts[2:])
            qkv = {"attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
                   "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
                   "attn.add_v_proj": ("txt_attn.qkv", 2)}
            plain = {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0",
                     "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
                     "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin"}
            if rest in qkv:
                bfl, offset, rows = f"double_blocks.{i}.{qkv[rest][0]}", qkv[rest][1] * h, 3 * h
            else:
                bfl, offset, rows = f"double_blocks.{i}.{plain[rest]}", 0, b.shape[0]
        else:
            i, rest = parts[1], ".".join(parts[2:])
            lin1 = {"attn.to_q": 0, "attn.to_k": h, "attn.to_v": 2 * h, "proj_mlp": 3 * h}
            if rest in lin1:
                bfl, offset, rows = f"single_blocks.{i}.linear1", lin1[rest], 3 * h + m
            else:
                bfl, offset, rows = f"single_blocks.{i}.{ {'proj_out': 'linear2', 'norm.linear': 'modulation.lin'}[rest] }", 0, b.shape[0]
        targets.setdefault(bfl, (rows, []))[1].append((offset, a, b, scale))
    out = {}
    for bfl, (rows, parts) in targets.items():
        down = torch.cat([a for _, a, _, _ in parts])
        up = torch.zeros(rows, down.shape[0])
        col = 0
        for offset, a, b, _ in parts:
            up[offset:offset + b.shape[0], col:col + a.shape[0]] = b
            col += a.shape[0]
        scales = {s for *_, s in parts}
        assert len(scales) == 1, bfl
        out[bfl] = (down, up, scales.pop() * down.shape[0])
    return out


def write_kohya(bfl, path):
    sd = {}
    for name, (down, up, alpha) in bfl.items():
        key = "lora_unet_" + name.replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"], sd[key + ".alpha"] = down, up, torch.tensor(alpha)
    save_file(sd, str(path))


def write_comfyui(bfl, path):
    sd = {}
    for name, (down, up, alpha) in bfl.items():
        key = "diffusion_model." + name
        sd[key + ".lora_A.weight"], sd[key + ".lora_B.weight"], sd[key + ".alpha"] = down, up, torch.tensor(alpha)
    save_file(sd, str(path))


# --- tests ---------------------------------------------------------------------------------------------

def test_prompt_file_with_kohya_options_and_cfg(tmp_path, fluxtrain_bin, dev):
    folder, ref = dev
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# samples\n"
                       "a photo of a cat --w 64 --h 48 --d 7 --s 4 --g 3.5\n"
                       "a red car on a road --w 48 --h 64 --d 12345 --s 3 --g 5 --l 2.5 --n blurry, lowres\n")
    out = tmp_path / "out"
    stdout = sample(fluxtrain_bin, folder, out, "--prompts", prompts).stdout
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["sample_000000_00_7.png", "sample_000000_01_12345.png"]
    assert stdout.split() == [str(f) for f in files]
    model = ref.transformer()
    first = compare(files[0], ref.image(model, "a photo of a cat", 7))
    second = compare(files[1], ref.image(model, "a red car on a road", 12345, negative="blurry, lowres", guidance=5.0,
                                         cfg=2.5, width=48, height=64, steps=3))
    not_flat(first)
    not_flat(second)
    text = Image.open(files[1]).text
    assert text["Description"] == "a red car on a road" and text["negative"] == "blurry, lowres"
    assert (text["seed"], text["steps"], text["guidance"], text["cfg"], text["step"]) == ("12345", "3", "5", "2.5", "0")
    assert (text["width"], text["height"], text["model"], text["loras"]) == ("48", "64", "flux1-dev.safetensors", "")
    # ComfyUI's graph of the same picture: real CFG with the negative prompt, no LoRA.
    nodes = comfyui_graph(files[1])
    assert [n["text"] for n in nodes["CLIPTextEncode"]] == ["a red car on a road", "blurry, lowres"]
    assert [n["cfg"] for n in nodes["CFGGuider"]] == [2.5] and "LoraLoaderModelOnly" not in nodes
    assert [n["noise_seed"] for n in nodes["RandomNoise"]] == [12345]
    assert [n["guidance"] for n in nodes["FluxGuidance"]] == [5.0, 5.0]


def test_cfg_changes_the_picture(tmp_path, fluxtrain_bin, dev):
    folder, _ = dev
    args = ["--prompt", "a cat", "--width", str(W), "--height", str(H), "--steps", "2", "--seed", "3"]
    sample(fluxtrain_bin, folder, tmp_path / "a", *args)
    sample(fluxtrain_bin, folder, tmp_path / "b", *args, "--cfg", "3", "--negative", "a dog")
    a = np.asarray(Image.open(next((tmp_path / "a").iterdir())))
    b = np.asarray(Image.open(next((tmp_path / "b").iterdir())))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 10


@pytest.mark.parametrize("layout", ["diffusers", "kohya", "comfyui"])
def test_lora_layouts_match_the_reference(tmp_path, fluxtrain_bin, dev, layout):
    folder, ref = dev
    lora = random_lora(ref.flux_cfg, seed=5)
    path = tmp_path / f"{layout}.safetensors"
    if layout == "diffusers":
        write_diffusers(lora, path)
    elif layout == "kohya":
        write_kohya(to_bfl(lora, ref.flux_cfg), path)
    else:
        write_comfyui(to_bfl(lora, ref.flux_cfg), path)
    args = ["--prompt", "a photo of sks dog", "--width", str(W), "--height", str(H), "--steps", str(STEPS), "--seed", "99"]
    out = tmp_path / "out"
    result = sample(fluxtrain_bin, folder, out, *args, "--lora", f"{path}:0.8")
    assert f"{len(lora) if layout == 'diffusers' else len(to_bfl(lora, ref.flux_cfg))} modules ({layout} layout)" in result.stderr
    got = compare(next(out.iterdir()), ref.image(ref.transformer(as_reference(lora), strength=0.8), "a photo of sks dog", 99))
    base = ref.image(ref.transformer(), "a photo of sks dog", 99)
    assert np.abs(got.astype(int) - base.astype(int)).max() > 10, "the LoRA changed nothing"
    assert Image.open(next(out.iterdir())).text["loras"] == f"{layout}.safetensors:0.8"
    assert [(n["lora_name"], n["strength_model"]) for n in comfyui_graph(next(out.iterdir()))["LoraLoaderModelOnly"]] \
        == [(f"{layout}.safetensors", 0.8)]


# Alphas large enough that the random factors change the tiny model's picture visibly (LoKr's and LoHa's
# products of small random factors are small).
@pytest.mark.parametrize("flags", [["--network-type", "lokr", "--factor", "4", "--alpha", "32"],
                                   ["--network-type", "loha", "--alpha", "200"], ["--dora-wd", "1", "--alpha", "2"]],
                         ids=["lokr", "loha", "dora"])
def test_lycoris_files_match_the_reference(tmp_path, fluxtrain_bin, test_tool, dev, flags):
    """A LyCORIS file (every factor random, written by fluxtrain's network) sampled at strength 0.8 gives
    the reference pipeline's picture with the weights PEFT's module computes (strength as ComfyUI applies
    it: W + 0.8 (W' - W)); tests/parity/test_lycoris.py holds the file's reading equal to PEFT's."""
    from reference.lycoris_reference import comfy_weight, peft_delta

    folder, ref = dev
    path = tmp_path / "lycoris.safetensors"
    params = tmp_path / "params.safetensors"
    run([test_tool, "lora-make", folder / "flux1-dev.safetensors", path, "--seed", "5", "--random-up", "1",
         "--rank", "4", "--double-indices", "1", "--single-indices", "0", *flags, "--params", params])
    saved, magnitudes = load_file(str(path)), load_file(str(params))
    modules = {}
    for key, value in saved.items():
        module, suffix = key.split(".", 1)
        modules.setdefault(module, {})[suffix] = value
    weights = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): k for k in ref.flux_sd if k.endswith(".weight")}
    factor = int(flags[flags.index("--factor") + 1]) if "--factor" in flags else -1
    merged = dict(ref.flux_sd)
    for module, t in modules.items():
        key = weights[module]
        w, bias = ref.flux_sd[key], ref.flux_sd.get(key[: -len(".weight")] + ".bias")
        p = {"down": t.get("lora_down.weight"), "up": t.get("lora_up.weight"),
             "magnitude": magnitudes.get(module + ".magnitude")}
        delta = peft_delta(w, bias, t, p, factor)
        assert torch.allclose(comfy_weight(w, t) - w, delta, atol=1e-6 * float(delta.abs().max()) + 1e-7), module
        merged[key] = w + 0.8 * delta
    args = ["--prompt", "a photo of sks dog", "--width", str(W), "--height", str(H), "--steps", str(STEPS), "--seed", "99"]
    out = tmp_path / "out"
    result = sample(fluxtrain_bin, folder, out, *args, "--lora", f"{path}:0.8")
    assert f"{len(modules)} modules (kohya layout)" in result.stderr, result.stderr
    got = compare(next(out.iterdir()), ref.image(fr.diffusers_model(ref.flux_cfg, merged), "a photo of sks dog", 99))
    base = ref.image(ref.transformer(), "a photo of sks dog", 99)
    assert np.abs(got.astype(int) - base.astype(int)).max() > 10, "the LyCORIS file changed nothing"


def test_two_loras_add_up(tmp_path, fluxtrain_bin, dev):
    folder, ref = dev
    one, two = random_lora(ref.flux_cfg, seed=1), random_lora(ref.flux_cfg, seed=2)
    write_diffusers(one, tmp_path / "one.safetensors")
    write_kohya(to_bfl(two, ref.flux_cfg), tmp_path / "two.safetensors")
    out = tmp_path / "out"
    sample(fluxtrain_bin, folder, out, "--prompt", "a cat", "--width", str(W), "--height", str(H), "--steps", "3",
           "--seed", "4", "--lora", tmp_path / "one.safetensors", "--lora", f"{tmp_path / 'two.safetensors'}:-0.5")
    model = ref.transformer(as_reference(one))
    with torch.no_grad():
        for name, (a, b, scale) in as_reference(two).items():
            model.get_submodule(name).weight += -0.5 * scale * (b @ a)
    compare(next(out.iterdir()), ref.image(model, "a cat", 4, steps=3))


def test_schnell_has_no_shift_and_no_guidance(tmp_path, fluxtrain_bin, tokenize_tool):
    folder = tmp_path / "schnell"
    run([fluxtrain_bin, "make-tiny", "--out", folder, "--seed", "2", "--schnell"])
    ref = Reference(folder, tokenize_tool, schnell=True)
    out = tmp_path / "out"
    sample(fluxtrain_bin, folder, out, "--prompt", "a house", "--width", str(W), "--height", str(H), "--seed", "8")
    files = list(out.iterdir())
    assert [f.name for f in files] == ["sample_000000_00_8.png"]
    assert Image.open(files[0]).text["steps"] == "4"  # schnell's default
    compare(files[0], ref.image(ref.transformer(), "a house", 8, steps=4))


def test_errors_name_the_problem(tmp_path, fluxtrain_bin, dev):
    folder, ref = dev
    base = ["--prompt", "a cat", "--width", "64", "--height", "48", "--steps", "1"]
    # A LoRA for another model: the keys that fit nothing are named.
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}, str(sdxl))
    r = sample(fluxtrain_bin, folder, tmp_path / "o", *base, "--lora", sdxl, check=False)
    assert r.returncode == 1 and "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in r.stderr
    assert "fit no layer" in r.stderr
    # A LoRA of another width: module, got and expected shapes.
    wrong = tmp_path / "wrong.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)}, str(wrong))
    r = sample(fluxtrain_bin, folder, tmp_path / "o", *base, "--lora", wrong, check=False)
    assert r.returncode == 1 and "transformer.transformer_blocks.0.attn.to_q" in r.stderr and "[4, 3072]" in r.stderr
    # Half a pair.
    half = tmp_path / "half.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 96)}, str(half))
    r = sample(fluxtrain_bin, folder, tmp_path / "o", *base, "--lora", half, check=False)
    assert r.returncode == 1 and "no up (lora_B) weight" in r.stderr
    # LyCORIS: an incomplete LoHa module names the module and the missing factor; a type fluxtrain does not
    # apply (Tucker cores) is named.
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_proj.hada_w1_a": torch.zeros(96, 4)}, str(loha))
    r = sample(fluxtrain_bin, folder, tmp_path / "o", *base, "--lora", loha, check=False)
    assert r.returncode == 1 and "lora_unet_double_blocks_0_img_attn_proj" in r.stderr
    assert "has only one of hada_w1_a + hada_w1_b" in r.stderr
    tucker = tmp_path / "tucker.safetensors"
    save_file({f"lora_unet_double_blocks_0_img_attn_proj.{k}": torch.zeros(4, 4)
               for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")}, str(tucker))
    r = sample(fluxtrain_bin, folder, tmp_path / "o", *base, "--lora", tucker, check=False)
    assert r.returncode == 1 and "Tucker LoHa" in r.stderr
    # Missing files and flags.
    r = sample(fluxtrain_bin, folder, tmp_path / "o", *base, "--lora", tmp_path / "nope.safetensors:0.5", check=False)
    assert r.returncode == 1 and "nope.safetensors" in r.stderr
    r = sample(fluxtrain_bin, tmp_path / "empty", tmp_path / "o", *base, check=False)
    assert r.returncode == 1 and "--model-dir" in r.stderr
    r = sample(fluxtrain_bin, folder, tmp_path / "o", "--prompt", "x", "--width", "50", check=False)
    assert r.returncode == 1 and "--width 50" in r.stderr
    assert not (tmp_path / "o").exists()
