"""The optimizers against their Python references, 50 steps in float64 on a least-squares problem.

Each parameter i minimises 0.5 * ||P_i X_i - Y_i||² (P_i = the parameter viewed as [rows, X_i.shape[0]]),
so its gradient (P_i X_i - Y_i) X_iᵀ depends on the parameter: C++ (fluxtrain_test_tool optim-run) and
Python each compute it from their own current parameters. One parameter starts at zero (a LoRA up
matrix: Prodigy keeps a 0-d p0 for it). Relative error = max |ours - reference| / max |reference| per
parameter, over every step of the trajectory; the bound is 1e-6 (measured: 0 — every
trajectory is bit-identical to the reference's on this machine).

References: prodigyopt.Prodigy (1.1.2), torch.optim.AdamW, transformers.optimization.Adafactor,
torch.optim.SGD, and a Lion written here as lucidrains/lion-pytorch has it.
"""
from __future__ import annotations

import json

import pytest
import torch
from diffusers.optimization import get_scheduler
from prodigyopt import Prodigy
from safetensors.torch import load_file, save_file
from transformers.optimization import Adafactor

from conftest import run

STEPS = 50
SHAPES = [(8, 6), (6,), (4, 8), (16,)]  # the third starts at zero
TOL = 1e-6


class ReferenceLion(torch.optim.Optimizer):
    """lucidrains/lion-pytorch's update (Chen et al. 2023), kohya's "Lion"."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.clone().mul_(beta1).add(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)


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
    ref, _, _ = reference_run(lambda p: ReferenceLion(p, lr=1e-3, weight_decay=wd, **kwargs), problem)
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
