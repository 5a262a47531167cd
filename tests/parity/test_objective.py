"""The rectified-flow objective (train/flow_matching.cpp, through fluxtrain_test_tool objective-sigmas and
objective-loss) against library references where a library has the formula, and against a transcription of
kohya-ss/sd-scripts where only kohya has it (sd-scripts is not on PyPI, so it cannot be imported; its
library/flux_train_utils.py was read at commit 5dff02a6). tests/unit/test_objective.cpp checks the same
formulas in double precision, including the trainer's own loss path (batch_loss) with and without a mask.

- sigmoid: torch.sigmoid(scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))), the same
  draws libtorch makes from a CPU generator with that seed.
- shift: diffusers' FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(sigmas=t), whose static shift
  s t / (1 + (s - 1) t) is kohya's (library/flux_train_utils.py get_noisy_model_input_and_timesteps,
  timestep_sampling "shift").
- flux_shift: the same scheduler with use_dynamic_shifting (exponential time_shift, e^mu / (e^mu + 1/t - 1))
  and mu from diffusers' Flux pipeline calculate_shift(image_seq_len): the line through (256, 0.5) and
  (4096, 1.15), which is kohya's get_lin_function(y1=0.5, y2=1.15) + time_shift(mu, 1.0, t) with the packed
  token count (h // 2) * (w // 2).
- l2, l1: torch.nn.functional.mse_loss / l1_loss (reduction "none"), as kohya's conditional_loss calls them.
- huber, smooth_l1: kohya's pseudo-Huber forms (library/train_util.py conditional_loss; constant huber_c, i.e.
  huber_schedule "constant" with huber_scale 1). PyTorch's huber_loss / smooth_l1_loss are different
  functions (piecewise quadratic/linear), so they are no reference: the transcription below is, and the test
  also checks that ours is not torch's piecewise Huber.
- the alpha mask: kohya (library/custom_train_functions.py apply_masked_loss) multiplies the elementwise loss
  by the mask and then takes the plain mean; fluxtrain divides by the mask's sum instead (docs/data.md), so
  the reference here is sum(loss * mask) / sum(mask) per sample, then the batch mean.

- sigma (kohya's default timestep_sampling, SD3's): diffusers.training_utils.compute_density_for_timestep_sampling
  (logit_normal, mode, uniform draws, given the same seeded generator) and the sigmas of diffusers'
  FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=s) at index floor(u * 1000), which is what
  kohya's get_noisy_model_input_and_timesteps looks up (scheduler.timesteps[indices], then get_sigmas).
- weighting_scheme's loss weights: diffusers.training_utils.compute_loss_weighting_for_sd3; the prediction types
  (additive, sigma_scaled) transcribed from kohya's apply_model_prediction_type (library/flux_train_utils.py).

Tolerances: sigmas 1e-6 absolute (fp32 against diffusers' float32 numpy), losses 1e-6 relative (fp32 sums of
a few thousand terms against the same fp32 formulas in torch).
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
from safetensors.torch import load_file, save_file

from conftest import run

N = 512
SIGMA_CASES = [dict(sampling="sigmoid", tokens=1024, scale=1.0, shift=3.0),
               dict(sampling="sigmoid", tokens=1024, scale=1.7, shift=3.0),
               dict(sampling="shift", tokens=1024, scale=1.0, shift=3.1582),
               dict(sampling="shift", tokens=1024, scale=1.0, shift=1.0),
               dict(sampling="shift", tokens=1024, scale=0.6, shift=1.5),
               dict(sampling="shift", tokens=1024, scale=1.3, shift=5.0),
               dict(sampling="flux_shift", tokens=256, scale=1.0, shift=3.0),
               dict(sampling="flux_shift", tokens=1024, scale=1.0, shift=3.0),
               dict(sampling="flux_shift", tokens=4096, scale=1.3, shift=3.0),
               dict(sampling="flux_shift", tokens=6144, scale=1.0, shift=3.0),
               dict(sampling="flux_shift", tokens=64, scale=1.0, shift=3.0),
               dict(sampling="uniform", tokens=1024, scale=1.0, shift=3.0)]
SIGMA_CASES += [dict(sampling="sigma", tokens=1024, scale=1.0, shift=3.1582, weighting="none"),
                dict(sampling="sigma", tokens=1024, scale=1.0, shift=1.0, weighting="logit_normal"),
                dict(sampling="sigma", tokens=1024, scale=1.0, shift=3.0, weighting="logit_normal",
                     logit_mean=0.5, logit_std=1.3),
                dict(sampling="sigma", tokens=1024, scale=1.0, shift=3.1582, weighting="mode"),
                dict(sampling="sigma", tokens=1024, scale=1.0, shift=1.0, weighting="mode", mode_scale=0.8),
                dict(sampling="sigma", tokens=1024, scale=1.0, shift=3.1582, weighting="cosmap")]
for _i, _case in enumerate(SIGMA_CASES):
    _case.update(n=N, seed=20 + _i)


@pytest.fixture(scope="module")
def ours_sigmas(tmp_path_factory, test_tool):
    folder = tmp_path_factory.mktemp("sigmas")
    (folder / "cases.json").write_text(json.dumps(SIGMA_CASES))
    run([test_tool, "objective-sigmas", folder / "cases.json", folder / "out.safetensors"])
    tensors = load_file(str(folder / "out.safetensors"))
    return [tensors[f"sigmas.{i}"] for i in range(len(SIGMA_CASES))]


def generator(case):
    return torch.Generator().manual_seed(case["seed"])


def logistic_normal(case):
    return torch.sigmoid(case["scale"] * torch.randn(case["n"], generator=generator(case)))


def scheduled(t, shift=None, tokens=None):
    """diffusers' sigmas for the given t (set_timesteps appends a terminal 0, dropped here)."""
    if tokens is None:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        scheduler.set_timesteps(sigmas=t.tolist())
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=256, max_image_seq_len=4096)
        scheduler.set_timesteps(sigmas=t.tolist(), mu=calculate_shift(tokens))
    return scheduler.sigmas[:-1].float()


def reference_sigma_sampling(case):
    """kohya's timestep_sampling sigma: a draw u of the weighting scheme's density, the training scheduler's
    sigma at index floor(u * 1000)."""
    u = compute_density_for_timestep_sampling(case.get("weighting", "none"), case["n"],
                                              logit_mean=case.get("logit_mean", 0.0),
                                              logit_std=case.get("logit_std", 1.0),
                                              mode_scale=case.get("mode_scale", 1.29), generator=generator(case))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=case["shift"])
    # mode's u can reach 1 at the edge, one past the last index (kohya would fail there; fluxtrain clamps).
    indices = (u * 1000).long().clamp(0, 999)
    return scheduler.sigmas[indices].float()


def reference_sigmas(case):
    if case["sampling"] == "sigma":
        return reference_sigma_sampling(case)
    if case["sampling"] == "uniform":
        return torch.rand(case["n"], generator=generator(case))
    t = logistic_normal(case)
    if case["sampling"] == "shift":
        return scheduled(t, shift=case["shift"])
    if case["sampling"] == "flux_shift":
        return scheduled(t, tokens=case["tokens"])
    return t


@pytest.mark.parametrize("index", range(len(SIGMA_CASES)),
                         ids=[f"{c['sampling']}-tokens{c['tokens']}-scale{c['scale']}-shift{c['shift']}"
                              + (f"-{c['weighting']}{c.get('logit_mean', '')}{c.get('mode_scale', '')}"
                                 if "weighting" in c else "")
                              for c in SIGMA_CASES])
def test_sigmas_match_the_references(ours_sigmas, index):
    case = SIGMA_CASES[index]
    torch.testing.assert_close(ours_sigmas[index], reference_sigmas(case), rtol=0, atol=1e-6)
    if case["sampling"] == "flux_shift":
        # The resolution matters: the same draws at twice the token count move by more than the tolerance.
        twice = scheduled(logistic_normal(case), tokens=case["tokens"] * 2)
        assert (twice - ours_sigmas[index]).abs().max() > 1e-3


# --- losses ------------------------------------------------------------------------------------------------

def kohya_conditional_loss(pred, target, loss_type, huber_c):
    """Transcribed from kohya-ss/sd-scripts library/train_util.py conditional_loss, reduction "none", with the
    constant huber_c (a per-sample tensor there, a number here)."""
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if loss_type == "huber":
        return 2 * huber_c * (torch.sqrt((pred - target) ** 2 + huber_c ** 2) - huber_c)
    if loss_type == "smooth_l1":
        return 2 * (torch.sqrt((pred - target) ** 2 + huber_c ** 2) - huber_c)
    raise ValueError(loss_type)


def reference_loss(pred, target, loss_type, huber_c, mask=None):
    elementwise = kohya_conditional_loss(pred, target, loss_type, huber_c)
    dims = list(range(1, pred.dim()))
    if mask is None:
        return elementwise.mean(dim=dims).mean()
    m = mask.expand_as(elementwise)
    return ((elementwise * m).sum(dim=dims) / m.sum(dim=dims)).mean()


LOSS_CASES = [dict(loss="l2", huber_c=0.1), dict(loss="l1", huber_c=0.1)] + [
    dict(loss=loss, huber_c=c) for loss in ("huber", "smooth_l1") for c in (0.1, 0.01, 1.0)]
MASKS = {"unmasked": None, "masked": "random", "uniform": 0.3}


@pytest.fixture(scope="module")
def prediction():
    """A packed batch [2, 64 tokens, 64 channels]: differences from ~0 to ~10, both signs; a mask [B, tokens, 1]
    (broadcast over the channels) with a masked-out region in sample 0."""
    g = torch.Generator().manual_seed(5)
    target = torch.randn(2, 64, 64, generator=g)
    pred = target + torch.randn(2, 64, 64, generator=g) * torch.logspace(-3, 1, 64)
    mask = torch.rand(2, 64, 1, generator=g)
    mask[0, :20] = 0
    return {"unmasked": None, "masked": mask, "uniform": torch.full((2, 64, 1), 0.3)}, pred, target


def tool_losses(test_tool, folder, cases, masks, **inputs):
    """{mask name: [our loss of each case]}: one objective-loss run per mask, with `inputs` (pred, target, ...)."""
    (folder / "cases.json").write_text(json.dumps(cases))
    out = {}
    for name, mask in masks.items():
        tensors = {**inputs, **({"mask": mask} if mask is not None else {})}
        save_file(tensors, str(folder / f"{name}.safetensors"))
        run([test_tool, "objective-loss", folder / f"{name}.safetensors", folder / "cases.json",
             folder / f"{name}-out.safetensors"])
        losses = load_file(str(folder / f"{name}-out.safetensors"))
        out[name] = [losses[f"loss.{i}"] for i in range(len(cases))]
    return out


@pytest.fixture(scope="module")
def ours_losses(tmp_path_factory, test_tool, prediction):
    """{mask name: [loss of each LOSS_CASES entry]}, one tool run per mask."""
    masks, pred, target = prediction
    return tool_losses(test_tool, tmp_path_factory.mktemp("losses"), LOSS_CASES, masks, pred=pred, target=target)


@pytest.mark.parametrize("masked", ["unmasked", "masked"])
@pytest.mark.parametrize("index", range(len(LOSS_CASES)),
                         ids=[f"{c['loss']}-c{c['huber_c']}" for c in LOSS_CASES])
def test_loss_matches_kohya_conditional_loss(prediction, ours_losses, index, masked):
    masks, pred, target = prediction
    case = LOSS_CASES[index]
    expected = reference_loss(pred, target, case["loss"], case["huber_c"], masks[masked])
    torch.testing.assert_close(ours_losses[masked][index], expected, rtol=1e-6, atol=0)


def test_huber_is_kohyas_pseudo_huber_not_torchs_huber(prediction, ours_losses):
    """For |d| >> c the pseudo-Huber 2c (sqrt(d^2 + c^2) - c) tends to 2c |d| - 2c^2 and 2 * torch's Huber
    to 2c |d| - c^2; for |d| << c both tend to d^2: ours is near 2 * F.huber_loss(delta=c) but differs from it
    by far more than the tolerance on this batch, which has both regimes."""
    _, pred, target = prediction
    index = LOSS_CASES.index(dict(loss="huber", huber_c=0.1))
    torch_huber = 2 * F.huber_loss(pred, target, delta=0.1)
    assert abs(ours_losses["unmasked"][index] - torch_huber) / torch_huber > 1e-3


def test_mask_divides_by_its_sum_not_by_the_element_count(prediction, ours_losses):
    """kohya's plain mean of loss * mask differs from ours by about sum(mask) / count per sample (ours is
    about twice it here); a uniform mask of any strength leaves our loss as it is unmasked (1e-6 relative)."""
    masks, pred, target = prediction
    kohya = (F.mse_loss(pred, target, reduction="none") * masks["masked"]).mean(dim=(1, 2)).mean()
    assert abs(ours_losses["masked"][0] - kohya) / kohya > 0.5
    for index in range(len(LOSS_CASES)):
        torch.testing.assert_close(ours_losses["uniform"][index], ours_losses["unmasked"][index], rtol=1e-6, atol=0)


def test_sigma_sampling_follows_the_density(ours_sigmas):
    """The weighting scheme's density shapes the draw: logit_normal's sigmas (shift 1) gather around 0.5 and
    mode's (scale 1.29) around the middle too, unlike the uniform draw of `none` (its shifted sigmas lean high)."""
    by_name = {(c["sampling"], c.get("weighting"), c["shift"], c.get("mode_scale", 1.29), c.get("logit_mean", 0.0)): i
               for i, c in enumerate(SIGMA_CASES)}
    logit = ours_sigmas[by_name[("sigma", "logit_normal", 1.0, 1.29, 0.0)]]
    assert abs(logit.mean().item() - 0.5) < 0.05 and logit.std().item() < 0.25
    uniform = ours_sigmas[by_name[("sigma", "none", 3.1582, 1.29, 0.0)]]
    assert uniform.mean().item() > 0.65


# --- prediction types and loss weighting -----------------------------------------------------------------

def kohya_prediction(pred, noisy, sigmas, prediction_type):
    """Transcribed from kohya-ss/sd-scripts library/flux_train_utils.py apply_model_prediction_type (sigmas
    broadcast over the packed layout)."""
    s = sigmas.view(-1, 1, 1)
    if prediction_type == "raw":
        return pred
    if prediction_type == "additive":
        return pred + noisy
    return pred * (-s) + noisy


WEIGHTED_CASES = [dict(loss="l2", huber_c=0.1, weighting=w, prediction=p)
                  for w in ("none", "sigma_sqrt", "cosmap", "logit_normal", "mode")
                  for p in ("raw", "additive", "sigma_scaled")] + [
    dict(loss="huber", huber_c=0.1, weighting="cosmap", prediction="sigma_scaled")]


@pytest.fixture(scope="module")
def weighted_inputs(prediction):
    masks, pred, target = prediction
    g = torch.Generator().manual_seed(6)
    sigmas = torch.tensor([0.07, 0.83])
    noisy = torch.randn(2, 64, 64, generator=g)
    return {"unmasked": None, "masked": masks["masked"]}, pred, target, noisy, sigmas


@pytest.fixture(scope="module")
def ours_weighted(tmp_path_factory, test_tool, weighted_inputs):
    masks, pred, target, noisy, sigmas = weighted_inputs
    return tool_losses(test_tool, tmp_path_factory.mktemp("weighted"), WEIGHTED_CASES, masks, pred=pred,
                       target=target, noisy=noisy, sigmas=sigmas)


@pytest.mark.parametrize("masked", ["unmasked", "masked"])
@pytest.mark.parametrize("index", range(len(WEIGHTED_CASES)),
                         ids=[f"{c['loss']}-{c['weighting']}-{c['prediction']}" for c in WEIGHTED_CASES])
def test_prediction_types_and_weighting_match_the_references(weighted_inputs, ours_weighted, index, masked):
    """kohya's order: the prediction type, the elementwise loss, times compute_loss_weighting_for_sd3's
    per-sample weight (applied with every prediction type here; kohya's Flux trainer only with sigma_scaled),
    the mask, the per-sample mean, the batch mean. 1e-6 relative."""
    masks, pred, target, noisy, sigmas = weighted_inputs
    case = WEIGHTED_CASES[index]
    p = kohya_prediction(pred, noisy, sigmas, case["prediction"])
    elementwise = kohya_conditional_loss(p, target, case["loss"], case["huber_c"])
    elementwise = elementwise * compute_loss_weighting_for_sd3(case["weighting"], sigmas).view(-1, 1, 1)
    mask = masks[masked]
    if mask is None:
        expected = elementwise.mean(dim=(1, 2)).mean()
    else:
        m = mask.expand_as(elementwise)
        expected = ((elementwise * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2))).mean()
    torch.testing.assert_close(ours_weighted[masked][index], expected, rtol=1e-6, atol=0)
    if case["weighting"] in ("sigma_sqrt", "cosmap") or case["prediction"] != "raw":
        # The case is not the plain loss: the check above could not pass by ignoring the option.
        plain = reference_loss(pred, target, case["loss"], case["huber_c"], mask)
        assert abs(ours_weighted[masked][index] - plain) / plain > 1e-3
