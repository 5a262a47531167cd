"""LyCORIS references for the tests: ComfyUI's reading of a LyCORIS/LoRA module (transcribed: ComfyUI is
not on PyPI) and PEFT's LoKr / LoHa / DoRA modules (the library itself) built for one layer."""
from __future__ import annotations

import torch

# --- ComfyUI's reading of a module (comfy/weight_adapter/*.py calculate_weight, base.py weight_decompose),
# fp32, no key offsets.


def comfy_weight(weight, t, strength=1.0):
    """The weight ComfyUI computes for `weight` patched with one module's tensors `t` (suffix -> tensor)."""
    alpha = t.get("alpha")
    if "lora_up.weight" in t:
        up, down = t["lora_up.weight"], t["lora_down.weight"]
        scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
        diff = up @ down
    elif "hada_w1_a" in t:
        scale = 1.0 if alpha is None else float(alpha) / t["hada_w1_b"].shape[0]
        diff = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    else:
        dim = None
        w1 = t.get("lokr_w1")
        if w1 is None:
            dim = t["lokr_w1_b"].shape[0]
            w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t.get("lokr_w2")
        if w2 is None:
            dim = t["lokr_w2_b"].shape[0]
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        scale = float(alpha) / dim if alpha is not None and dim is not None else 1.0
        diff = torch.kron(w1, w2)
    if "dora_scale" not in t:
        return weight + (strength * scale) * diff
    dora_scale = t["dora_scale"]
    calc = weight + diff * scale
    if dora_scale.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
    else:
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True).transpose(0, 1)
    norm = norm + torch.finfo(weight.dtype).eps
    calc = calc * (dora_scale / norm)
    return calc if strength == 1.0 else weight + strength * (calc - weight)



# --- PEFT's modules with the trained tensors.

class One(torch.nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.lin.weight.copy_(weight)
            if bias is not None:
                self.lin.bias.copy_(bias)


def peft_delta(weight, bias, t, params, factor):
    """ΔW of PEFT's module for this layer, built by PEFT's own config rules, with the trained tensors."""
    import peft

    alpha = float(t["alpha"])
    if "hada_w1_a" in t:
        r = t["hada_w1_b"].shape[0]
        config = peft.LoHaConfig(r=r, alpha=alpha, target_modules=["lin"])
        names = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
    elif "lora_up.weight" in t:
        r = t["lora_down.weight"].shape[0]
        config = peft.LoraConfig(r=r, lora_alpha=alpha, use_dora=True, target_modules=["lin"])
        names = []
    else:
        decomposed = [t[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in t]
        # Both factors full: LyCORIS trains at scale 1 (alpha = rank); PEFT takes w2 full for a large r.
        r = decomposed[0] if decomposed else 100000
        config = peft.LoKrConfig(r=r, alpha=alpha if decomposed else float(r), decompose_both="lokr_w1_a" in t,
                                 decompose_factor=factor, target_modules=["lin"])
        names = [k for k in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b") if k in t]
    net = peft.get_peft_model(One(weight, bias), config)
    layer = net.base_model.model.lin
    with torch.no_grad():
        for name in names:
            p = getattr(layer, name)["default"]
            assert p.shape == t[name].shape, (name, p.shape, t[name].shape)
            p.copy_(t[name])
        # PEFT holds no tensor beyond these: its module has exactly the file's factors.
        held = {n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "hada_w1_a",
                            "hada_w1_b", "hada_w2_a", "hada_w2_b") if "default" in getattr(layer, n, {})}
        assert held == set(names), (held, names)
        if "lora_up.weight" in t:
            layer.lora_A["default"].weight.copy_(params["down"])
            layer.lora_B["default"].weight.copy_(params["up"])
            layer.lora_magnitude_vector["default"].weight.copy_(params["magnitude"])
    merged = net.merge_and_unload()
    return (merged.lin.weight - weight).detach()
