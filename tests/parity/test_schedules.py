"""Learning-rate schedules against diffusers.optimization.get_scheduler (what kohya uses).

For every schedule name, several step counts, warmups (0, a count, a fraction: kohya's lr_warmup_steps,
which becomes int(fraction * total)), num_cycles and power, the lr of every step (and some steps past
the end) must equal the one LambdaLR gives the optimizer, to 1e-12 relative.
"""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from diffusers.optimization import get_scheduler

from conftest import run

NAMES = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
         "piecewise_constant"]
RULES = "1:10,0.5:25,0.1:40,0.01"


def reference_lrs(cfg):
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=cfg["lr"])
    warmup = cfg["warmup"]
    warmup = int(warmup * cfg["steps"]) if 0 < warmup < 1 else int(warmup)
    scheduler = get_scheduler(cfg["name"], optimizer, step_rules=RULES, num_warmup_steps=warmup,
                              num_training_steps=cfg["steps"], num_cycles=cfg["cycles"], power=cfg["power"])
    lrs = []
    for _ in range(cfg["evaluate"]):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def configs():
    out = []
    for name, steps, warmup in itertools.product(NAMES, [1, 10, 37, 200], [0, 5, 0.1]):
        for cycles, power in [(1, 1.0), (3, 2.0), (2, 0.5)]:
            for lr in [1.0, 3e-4]:
                out.append(dict(name=name, steps=steps, warmup=warmup, cycles=cycles, power=power, lr=lr,
                                rules=RULES, evaluate=steps + 3))
    return out


def test_every_step_matches_diffusers(tmp_path, test_tool):
    cfgs = configs()
    path = tmp_path / "configs.json"
    path.write_text(json.dumps(cfgs))
    ours = json.loads(run([test_tool, "lr-schedule", path]).stdout)
    assert len(ours) == len(cfgs)
    worst = {}
    for cfg, got in zip(cfgs, ours):
        ref = reference_lrs(cfg)
        assert len(got) == len(ref)
        for step, (a, b) in enumerate(zip(got, ref)):
            err = abs(a - b) / max(abs(b), 1e-300) if b != 0 else abs(a)
            worst[cfg["name"]] = max(worst.get(cfg["name"], 0.0), err)
            assert err <= 1e-12, f"{cfg} step {step}: ours {a!r}, diffusers {b!r}"
    print("\nmax rel err per schedule over", len(cfgs), "configs:", {k: f"{v:.1e}" for k, v in worst.items()})


@pytest.mark.parametrize("name, expected", [("cosine_with_restart", "cosine_with_restarts"), ("linaer", "linear")])
def test_unknown_name_lists_valid(name, expected, tmp_path, test_tool):
    path = tmp_path / "configs.json"
    path.write_text(json.dumps([dict(name=name, steps=10)]))
    result = run([test_tool, "lr-schedule", path], check=False)
    assert result.returncode != 0
    assert name in result.stderr and expected in result.stderr and "polynomial" in result.stderr
