"""The optimizers against their Python references, 50 steps in float64 on a least-squares problem.

Each parameter i minimises 0.5 * ||P_i X_i - Y_i||² (P_i = the parameter viewed as [rows, X_i.shape[0]]),
so its gradient (P_i X_i - Y_i) X_iᵀ depends on the parameter: C++ (fluxtrain_test_tool optim-run) and
Python each compute it from their own current parameters. One parameter starts at zero (a LoRA up
matrix: Prodigy keeps a 0-d p0 for it). Relative error = max |ours - reference| / max |reference| per
parameter, over every step of the trajectory; the bound is 1e-6 (measured: 0 — every
trajectory is bit-identical to the reference's on this machine).

References: prodigyopt.Prodigy (1.1.2), torch.optim.AdamW, transformers.optimization.Adafactor,
torch.optim.SGD, lion_pytorch.Lion (lion-pytorch 0.2.5, lucidrains; the package kohya's "Lion" imports).
AdamW8bit (float32, its own tolerances in its tests): torch's fp32 AdamW, and bitsandbytes 0.50.2 on the CPU
(code books, blockwise quantisation, bitsandbytes.optim.AdamW8bit).
"""
from __future__ import annotations

import json

import pytest
import torch
from diffusers.optimization import get_scheduler
from lion_pytorch import Lion
from prodigyopt import Prodigy
from safetensors.torch import load_file, save_file
from transformers.optimization import Adafactor

from conftest import run

STEPS = 50
SHAPES = [(8, 6), (6,), (4, 8), (16,)]  # the third starts at zero
TOL = 1e-6


def make_problem(seed, shapes=SHAPES, dtype=torch.float64, k=10):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, shape in enumerate(shapes):
        n = shape[-1]
        rows = 1 if len(shape) == 1 else shape[0]
        p = 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
        tensors[f"p.{i}"] = torch.zeros(shape, dtype=torch.float64) if i == 2 else p
        tensors[f"x.{i}"] = torch.randn(n, k, generator=g, dtype=torch.float64) / n**0.5
        tensors[f"y.{i}"] = torch.randn(rows, k, generator=g, dtype=torch.float64)
    return {name: t.to(dtype) for name, t in tensors.items()}


def reference_run(make_optimizer, problem, steps=STEPS, schedule=None):
    params = []
    while f"p.{len(params)}" in problem:
        params.append(problem[f"p.{len(params)}"].clone().requires_grad_(True))
    optimizer = make_optimizer(params)
    scheduler = get_scheduler(optimizer=optimizer, **schedule) if schedule else None
    traj = [[] for _ in params]
    ds, lrs = [], []
    for _ in range(steps):
        for i, p in enumerate(params):
            x, y = problem[f"x.{i}"], problem[f"y.{i}"]
            p.grad = ((p.detach().reshape(-1, x.shape[0]) @ x - y) @ x.T).reshape(p.shape)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler:
            scheduler.step()
        for i, p in enumerate(params):
            traj[i].append(p.detach().clone())
        ds.append(optimizer.param_groups[0].get("d"))
    return [torch.stack(t) for t in traj], ds, lrs


def ours_run(test_tool, tmp_path, problem, type_, args, lr, wd=0.0, extra=()):
    problem_path, out = tmp_path / "problem.safetensors", tmp_path / "out.safetensors"
    save_file(problem, str(problem_path))
    result = run([test_tool, "optim-run", type_, args, problem_path, out, "--steps", STEPS, "--lr", repr(lr),
                  "--wd", repr(wd), *extra])
    tensors = load_file(str(out))
    traj = [tensors[f"traj.{i}"] for i in range(sum(k.startswith("traj.") for k in tensors))]
    return traj, tensors, json.loads(result.stdout)


def max_rel_err(ours, ref):
    worst = 0.0
    for o, r in zip(ours, ref):
        assert o.shape == r.shape
        scale = r.abs().max().clamp_min(1e-300)
        worst = max(worst, float((o.double() - r.double()).abs().max() / scale))
    return worst


def check(name, ours, ref, tol=TOL):
    err = max_rel_err(ours, ref)
    print(f"\n{name}: max rel err over {STEPS} steps {err:.2e}")
    assert err <= tol
    return err


PRODIGY_CASES = {
    "defaults": ("", {}, 0.0),
    "coupled_wd": ("decouple=False weight_decay=0.1", dict(decouple=False, weight_decay=0.1), 0.0),
    "seed_args": ("decouple=True weight_decay=0.01 use_bias_correction=True safeguard_warmup=True d_coef=2",
                  dict(decouple=True, weight_decay=0.01, use_bias_correction=True, safeguard_warmup=True,
                       d_coef=2.0), 0.0),
    "growth_beta3": ("growth_rate=1.02 beta3=0.95 betas=(0.9,0.99) d0=1e-5",
                     dict(growth_rate=1.02, beta3=0.95, betas=(0.9, 0.99), d0=1e-5), 0.0),
    "no_first_moment": ("betas=0,0.999 eps=1e-6", dict(betas=(0.0, 0.999), eps=1e-6), 0.0),
    "slice_p_wd_arg": ("slice_p=3", dict(slice_p=3, weight_decay=0.05), 0.05),
}


@pytest.mark.parametrize("case", PRODIGY_CASES)
def test_prodigy(case, tmp_path, test_tool):
    args, kwargs, wd = PRODIGY_CASES[case]
    problem = make_problem(1)
    ref, ds, _ = reference_run(lambda p: Prodigy(p, lr=1.0, **kwargs), problem)
    ours, tensors, _ = ours_run(test_tool, tmp_path, problem, "Prodigy", args, 1.0, wd)
    check(f"Prodigy {case}", ours, ref)
    d_err = float((tensors["stat.d"] - torch.tensor(ds, dtype=torch.float64)).abs().max() / max(ds))
    print(f"Prodigy {case}: d after 50 steps {ds[-1]:.4e}, max rel err of d {d_err:.2e}")
    assert d_err <= TOL
    assert ds[-1] > kwargs.get("d0", 1e-6)  # d really adapted


def test_prodigy_with_schedule_and_resume(tmp_path, test_tool):
    """Prodigy under a cosine schedule with 10% warmup (lr 0 at step 0: prodigyopt's early return), and
    the same run interrupted after 20 steps, saved, reloaded into a new optimizer and continued."""
    problem = make_problem(2)
    schedule = dict(name="cosine", num_warmup_steps=int(0.1 * STEPS), num_training_steps=STEPS)
    args = "use_bias_correction=True safeguard_warmup=True"
    ref, ds, lrs = reference_run(lambda p: Prodigy(p, lr=1.0, use_bias_correction=True, safeguard_warmup=True),
                                 problem, schedule=schedule)
    extra = ["--schedule", "cosine", "--warmup", "0.1"]
    ours, tensors, _ = ours_run(test_tool, tmp_path, problem, "prodigy", args, 1.0, extra=extra)
    assert torch.equal(tensors["lr"], torch.tensor(lrs, dtype=torch.float64))
    check("Prodigy cosine warmup", ours, ref)
    resumed, _, _ = ours_run(test_tool, tmp_path, problem, "prodigy", args, 1.0, extra=[*extra, "--resume-at", "20"])
    assert all(torch.equal(a, b) for a, b in zip(resumed, ours)), "resume is not bit-exact"


ADAMW_CASES = {
    "defaults": ("", {}, 0.01),
    "amsgrad": ("amsgrad=True betas=0.8,0.99 eps=1e-6", dict(amsgrad=True, betas=(0.8, 0.99), eps=1e-6), 0.1),
}


@pytest.mark.parametrize("case", ADAMW_CASES)
def test_adamw(case, tmp_path, test_tool):
    args, kwargs, wd = ADAMW_CASES[case]
    problem = make_problem(3)
    ref, _, _ = reference_run(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=wd, **kwargs), problem)
    ours, _, _ = ours_run(test_tool, tmp_path, problem, "AdamW", args, 1e-2, wd)
    check(f"AdamW {case}", ours, ref)
    resumed, _, _ = ours_run(test_tool, tmp_path, problem, "AdamW", args, 1e-2, wd, extra=["--resume-at", "17"])
    assert all(torch.equal(a, b) for a, b in zip(resumed, ours)), "resume is not bit-exact"


def test_adamw8bit_against_fp32_adamw(tmp_path, test_tool):
    """8-bit state (blockwise dynamic quantisation, tensors >= 4096 elements) against torch's fp32 AdamW.
    Elementwise equality is not the goal (a small entry of m keeps only ~1 significant digit, so single
    coordinates can move differently); the bounds are on what training sees: at every step the distance
    to the fp32 trajectory is <= 10% of the distance travelled (measured 4-7%), the loss decrease is
    within 3% of fp32's (measured 0.3-1.5%), and the state takes > 3.5x less memory (3.85x here, with one
small fp32-state parameter; 3.94x for large tensors alone)."""
    shapes = [(64, 96), (96,), (64, 96)]
    problem = make_problem(4, shapes=shapes, dtype=torch.float32, k=32)
    for lr in (1e-3, 1e-2):
        ref, _, _ = reference_run(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), problem)
        ours, _, info8 = ours_run(test_tool, tmp_path, problem, "AdamW8bit", "", lr, 0.01)
        for i, (o, r) in enumerate(zip(ours, ref)):
            travelled = (r - problem[f"p.{i}"]).flatten(1).norm(dim=1)
            drift = float(((o - r).flatten(1).norm(dim=1) / travelled).max())
            print(f"\nAdamW8bit lr {lr} param {i} {tuple(o.shape[1:])}: drift / distance travelled {drift:.3f}")
            assert drift <= (0.0 if i == 1 else 0.1)  # param 1 is below min_8bit_size: fp32 state, exact

        def loss(traj):
            return sum(0.5 * float(((t.reshape(-1, problem[f"x.{i}"].shape[0]) @ problem[f"x.{i}"]
                                     - problem[f"y.{i}"]) ** 2).sum()) for i, t in enumerate(traj))

        start = loss([problem[f"p.{i}"] for i in range(len(shapes))])
        decrease8, decrease32 = start - loss([t[-1] for t in ours]), start - loss([t[-1] for t in ref])
        print(f"AdamW8bit lr {lr}: loss decrease {decrease8:.2f} vs fp32 {decrease32:.2f}")
        assert abs(decrease8 / decrease32 - 1) <= 0.03
    _, _, info32 = ours_run(test_tool, tmp_path, problem, "AdamW", "", 1e-3, 0.01)
    ratio = info32["state_bytes"] / info8["state_bytes"]
    print(f"state bytes: fp32 {info32['state_bytes']}, 8-bit {info8['state_bytes']} ({ratio:.2f}x less)")
    assert ratio > 3.5
    resumed, _, _ = ours_run(test_tool, tmp_path, problem, "AdamW8bit", "", 1e-2, 0.01, extra=["--resume-at", "25"])
    assert all(torch.equal(a, b) for a, b in zip(resumed, ours)), "resume is not bit-exact"


def bitsandbytes_reference_quantize(x, code):
    """bitsandbytes' own PyTorch kernel of quantize_blockwise (backends/default/ops.py: exact nearest code
    via the midpoints, ties to the lower code), which its CPU build overrides with a native kernel: called
    past that override with OpOverload.redispatch to the CompositeExplicitAutograd ("default") key."""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(keys, x, code, 256)


def test_adamw8bit_quantisation_matches_bitsandbytes(tmp_path, test_tool):
    """Our blockwise 8-bit quantisation (optim/quantize.h through `optim-quantize`) against bitsandbytes
    (requirements-test.txt), on the CPU:
    - the code books equal bitsandbytes.functional.create_dynamic_map(signed=True / False) exactly;
    - codes and absmax equal bitsandbytes' reference kernel (bitsandbytes_reference_quantize) exactly, and
      the dequantised values equal bitsandbytes.functional.dequantize_blockwise of our codes exactly;
    - against the native CPU kernel that bitsandbytes.functional.quantize_blockwise (and the CPU optimizer)
      run: the same absmax; the code index within 1 wherever |x| >= 1e-4 * absmax, and the value within
      2.5e-5 * absmax below that (an all-zero block: any code, as it dequantises to 0). That kernel finds
      the code with an approximate search: on these tensors it picks the neighbour of the nearest code for
      0-2.7% (signed) and 0.2-8.2% (unsigned) of the values above 1e-4 * absmax, mostly values close to the
      midpoint of two codes, and maps values under ~1e-5 * absmax to its 8th-smallest code (1.6e-5 or
      ±2.1e-5) instead of 0. Our nearest-code rule is the one of bitsandbytes' reference kernel.
    The inputs: a partial last block, a block of zeros, moments spanning many decades (Adam's v does), and
    the absolute values of all of them for the unsigned book."""
    import bitsandbytes.functional as bnbf

    g = torch.Generator().manual_seed(9)
    spread = torch.exp(4 * torch.randn(96, 256, generator=g))
    xs = {"normal_1000": torch.randn(1000, generator=g),
          "zero_block": torch.cat([torch.zeros(256), torch.randn(300, generator=g)]),
          "adam_v": spread, "adam_m": spread * torch.randn(96, 256, generator=g).sign()}
    xs |= {f"abs_{name}": x.abs() for name, x in xs.items()}  # the unsigned book is for the second moment, >= 0
    save_file({f"x.{name}": x for name, x in xs.items()}, str(tmp_path / "in.safetensors"))
    run([test_tool, "optim-quantize", tmp_path / "in.safetensors", tmp_path / "out.safetensors"])
    ours = load_file(str(tmp_path / "out.safetensors"))
    for kind in ("signed", "unsigned"):
        code = bnbf.create_dynamic_map(signed=kind == "signed")
        assert torch.equal(ours[f"code.{kind}"], code), kind
        for name, x in xs.items():
            if name.startswith("abs_") != (kind == "unsigned"):
                continue
            codes, absmax = ours[f"{kind}.codes.{name}"], ours[f"{kind}.absmax.{name}"]
            ref_codes, ref_absmax = bitsandbytes_reference_quantize(x, code)
            assert torch.equal(absmax, ref_absmax), (kind, name)
            assert torch.equal(codes, ref_codes), (kind, name, int((codes != ref_codes).sum()))
            values = bnbf.dequantize_blockwise(codes, absmax=absmax, code=code, blocksize=256)
            assert torch.equal(ours[f"{kind}.values.{name}"], values), (kind, name)

            native, state = bnbf.quantize_blockwise(x, code=code, blocksize=256)
            assert torch.equal(state.absmax, absmax), (kind, name)
            scale = absmax.repeat_interleave(256)[:x.numel()].view(x.shape)
            large = (x.abs() >= 1e-4 * scale) & (scale > 0)  # an all-zero block dequantises to 0 whatever its codes
            index_gap = (native.long() - codes.long()).abs()
            value_gap = (code[native.long()] - code[codes.long()]).abs() * scale
            print(f"\n{kind} {name}: the native CPU kernel picks another code for "
                  f"{float((index_gap[large] > 0).float().mean()):.2%} of |x| >= 1e-4 absmax, "
                  f"{float((index_gap[~large] > 0).float().mean()) if (~large).any() else 0:.2%} below")
            assert int(index_gap[large].max()) <= 1, (kind, name)
            assert bool((value_gap[~large] <= 2.5e-5 * scale[~large]).all()), (kind, name)


def bitsandbytes_step_from(state, params, grads, step, lr, wd):
    """One bitsandbytes.optim.AdamW8bit step (its CPU path) from our state after `step` steps."""
    import bitsandbytes as bnb

    ps = [p.clone().requires_grad_(True) for p in params]
    optimizer = bnb.optim.AdamW8bit(ps, lr=lr, weight_decay=wd)
    for p in ps:  # one throw-away step makes bitsandbytes lay out its state; it is all overwritten below
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for i, (p, grad) in enumerate(zip(ps, grads)):
        with torch.no_grad():
            p.copy_(params[i])
        p.grad = grad.clone()
        st = optimizer.state[p]
        st["step"] = step
        if f"{i}.exp_avg.codes" in state:
            assert st["state1"].dtype == torch.uint8 and st["absmax1"].numel() == state[f"{i}.exp_avg.absmax"].numel()
            assert torch.equal(st["qmap1"], bnb.functional.create_dynamic_map(signed=True))
            assert torch.equal(st["qmap2"], bnb.functional.create_dynamic_map(signed=False))
            st["state1"].copy_(state[f"{i}.exp_avg.codes"].view(p.shape))
            st["absmax1"].copy_(state[f"{i}.exp_avg.absmax"])
            st["state2"].copy_(state[f"{i}.exp_avg_sq.codes"].view(p.shape))
            st["absmax2"].copy_(state[f"{i}.exp_avg_sq.absmax"])
        else:  # under min_8bit_size (4096, the default on both sides): fp32 moments
            assert st["state1"].dtype == torch.float32
            st["state1"].copy_(state[f"{i}.exp_avg"])
            st["state2"].copy_(state[f"{i}.exp_avg_sq"])
    optimizer.step()
    return [p.detach().clone() for p in ps]


def test_adamw8bit_step_matches_bitsandbytes(tmp_path, test_tool):
    """AdamW8bit against bitsandbytes.optim.AdamW8bit on the CPU (its native 8-bit kernel and its fp32
    path for tensors under min_8bit_size), float32, lr 1e-2, weight decay 0.01.
    - One step from the same state: after K = 1, 7, 25 and 49 of our steps, bitsandbytes is given our
      state (8-bit codes and absmax, or the fp32 moments) and parameters and takes step K + 1 with the
      same gradient. Its parameters must equal ours to 8 units in the last place (float32) of the larger
      of the old and the new value (measured: at most 4, and 0.7-10% of the values differ at all; an error
      in the formula, e.g. a bias correction or eps placement, is thousands of ulps off). The update
      arithmetic is the same but for one rounding: we take torch.optim.AdamW's lerp_ for the first moment,
      bitsandbytes mul_ + add_, and the last bit of m that this changes is divided by sqrt(v), which the
      8-bit code can make small.
    - Whole trajectories (50 steps each, from zero state): the distance between ours and bitsandbytes'
      is <= 10% of the distance travelled (measured 2.6-2.8%). They drift apart because bitsandbytes' CPU
      kernel re-quantises the moments with its approximate code search (see the test above), which the
      next steps then read."""
    import bitsandbytes as bnb

    shapes = [(64, 96), (96,), (64, 96)]
    problem = make_problem(4, shapes=shapes, dtype=torch.float32, k=32)
    lr, wd = 1e-2, 0.01
    ours, _, _ = ours_run(test_tool, tmp_path, problem, "AdamW8bit", "", lr, wd)
    for k in (1, 7, 25, 49):
        resumed, _, _ = ours_run(test_tool, tmp_path, problem, "AdamW8bit", "", lr, wd, extra=["--resume-at", k])
        assert all(torch.equal(a, b) for a, b in zip(resumed, ours))
        state = load_file(str(tmp_path / "state.safetensors"))
        assert json.loads((tmp_path / "state.json").read_text())["param_steps"] == [k] * len(shapes)
        params = [t[k - 1] for t in ours]
        grads = []
        for i, p in enumerate(params):
            x, y = problem[f"x.{i}"], problem[f"y.{i}"]
            grads.append(((p.reshape(-1, x.shape[0]) @ x - y) @ x.T).reshape(p.shape))
        theirs = bitsandbytes_step_from(state, params, grads, k, lr, wd)
        for i, (t, p) in enumerate(zip(theirs, params)):
            mine = ours[i][k]
            larger = torch.maximum(mine.abs(), p.abs())
            ulp = torch.nextafter(larger, torch.tensor(float("inf"))) - larger
            ulps = float(((t - mine).abs() / ulp).max())
            print(f"\nAdamW8bit step {k + 1} param {i} {tuple(p.shape)}: |ours - bitsandbytes| <= {ulps:.0f} ulp, "
                  f"{float((t != mine).float().mean()):.3%} of the values differ")
            assert ulps <= 8, (k, i, ulps)

    theirs, _, _ = reference_run(lambda p: bnb.optim.AdamW8bit(p, lr=lr, weight_decay=wd), problem)
    for i, (o, t) in enumerate(zip(ours, theirs)):
        travelled = (t - problem[f"p.{i}"]).flatten(1).norm(dim=1)
        drift = float(((o - t).flatten(1).norm(dim=1) / travelled).max())
        print(f"AdamW8bit trajectory param {i}: distance to bitsandbytes' / distance travelled {drift:.3f}")
        assert drift <= 0.1


ADAFACTOR_CASES = {
    "relative_step_defaults": ("", dict(lr=None), None),
    "warmup_init": ("warmup_init=True", dict(lr=None, warmup_init=True), None),
    "relative_no_scale": ("scale_parameter=False", dict(lr=None, scale_parameter=False), None),
    "fixed_lr": ("relative_step=False scale_parameter=False",
                 dict(lr=1e-2, relative_step=False, scale_parameter=False), 1e-2),
    "fixed_lr_scaled_beta1_wd": ("relative_step=False beta1=0.9 weight_decay=0.01 clip_threshold=0.5",
                                 dict(lr=1e-1, relative_step=False, beta1=0.9, weight_decay=0.01,
                                      clip_threshold=0.5), 1e-1),
    "decay_rate_eps": ("decay_rate=-0.5 eps=(1e-30,1e-2)", dict(lr=None, decay_rate=-0.5, eps=(1e-30, 1e-2)), None),
}


@pytest.mark.parametrize("case", ADAFACTOR_CASES)
def test_adafactor(case, tmp_path, test_tool):
    args, kwargs, lr = ADAFACTOR_CASES[case]
    problem = make_problem(5)
    ref, _, _ = reference_run(lambda p: Adafactor(p, **kwargs), problem)
    ours, _, _ = ours_run(test_tool, tmp_path, problem, "Adafactor", args, lr or 1.0)
    check(f"Adafactor {case}", ours, ref)


LION_CASES = {"defaults": ("", {}, 0.0), "betas_wd": ("betas=0.95,0.98", dict(betas=(0.95, 0.98)), 0.1)}


@pytest.mark.parametrize("case", LION_CASES)
def test_lion(case, tmp_path, test_tool):
    args, kwargs, wd = LION_CASES[case]
    problem = make_problem(6)
    ref, _, _ = reference_run(lambda p: Lion(p, lr=1e-3, weight_decay=wd, **kwargs), problem)
    ours, _, _ = ours_run(test_tool, tmp_path, problem, "Lion", args, 1e-3, wd)
    check(f"Lion {case}", ours, ref)


SGD_CASES = {
    "plain": ("", {}, 0.0),
    "nesterov_wd": ("momentum=0.9 nesterov=True", dict(momentum=0.9, nesterov=True), 0.01),
    "dampening": ("momentum=0.9 dampening=0.1", dict(momentum=0.9, dampening=0.1), 0.0),
}


@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd(case, tmp_path, test_tool):
    args, kwargs, wd = SGD_CASES[case]
    problem = make_problem(7)
    ref, _, _ = reference_run(lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=wd, **kwargs), problem)
    ours, _, _ = ours_run(test_tool, tmp_path, problem, "SGD", args, 0.1, wd)
    check(f"SGD {case}", ours, ref)


def test_unknown_key_is_named(tmp_path, test_tool):
    problem = make_problem(8)
    save_file(problem, str(tmp_path / "p.safetensors"))
    result = run([test_tool, "optim-run", "Prodigy", "d_coeff=2", tmp_path / "p.safetensors", tmp_path / "o.safetensors"],
                 check=False)
    assert result.returncode != 0
    assert "d_coeff" in result.stderr and "d_coef" in result.stderr and "safeguard_warmup" in result.stderr
