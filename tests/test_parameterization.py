import pytest
import torch
from diffusers import DDPMScheduler

from amd_utils.parameterization import (
    ddpm_add_noise,
    ddpm_model_target,
    ddpm_x0,
    flow_add_noise,
    flow_model_target,
    flow_x0,
    sample_noise_levels,
    shift_noise_level,
    sit_add_noise,
    sit_model_target,
    sit_x0,
)

# SDXL's schedule (stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json).
SDXL_SCHEDULER = DDPMScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
)
TIMESTEPS = torch.tensor([0, 20, 249, 499, 749, 980, 999])


def _sample(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (len(TIMESTEPS), 4, 8, 8)
    return torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_round_trip_float64(prediction_type):
    x0, noise = _sample(torch.float64)
    abar = SDXL_SCHEDULER.alphas_cumprod
    x_t = ddpm_add_noise(x0, noise, abar, TIMESTEPS)
    output = ddpm_model_target(x0, noise, abar, TIMESTEPS, prediction_type)
    torch.testing.assert_close(ddpm_x0(x_t, output, abar, TIMESTEPS, prediction_type), x0, atol=1e-10, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ddpm_round_trip_low_precision_inputs(prediction_type, dtype):
    # The model input and output are rounded to the training dtype; the estimate comes back in float32
    # and is as accurate as that rounding allows (amplified by at most 1/sqrt(abar_999) ~ 14.6).
    x0, noise = _sample(torch.float64, seed=1)
    abar = SDXL_SCHEDULER.alphas_cumprod
    x_t = ddpm_add_noise(x0.to(dtype), noise.to(dtype), abar, TIMESTEPS)
    output = ddpm_model_target(x0, noise, abar, TIMESTEPS, prediction_type).to(dtype)
    estimate = ddpm_x0(x_t, output, abar, TIMESTEPS, prediction_type)
    assert x_t.dtype == dtype and estimate.dtype == torch.float32
    resolution = torch.finfo(dtype).eps * 2 * 15 * 5
    torch.testing.assert_close(estimate.double(), x0, atol=resolution, rtol=0)


def test_ddpm_matches_diffusers_scheduler():
    x0, noise = _sample()
    abar = SDXL_SCHEDULER.alphas_cumprod
    torch.testing.assert_close(
        ddpm_add_noise(x0, noise, abar, TIMESTEPS), SDXL_SCHEDULER.add_noise(x0, noise, TIMESTEPS)
    )
    torch.testing.assert_close(
        ddpm_model_target(x0, noise, abar, TIMESTEPS, "v_prediction"), SDXL_SCHEDULER.get_velocity(x0, noise, TIMESTEPS)
    )
    # The scheduler's own x0 estimate (one step from t with epsilon prediction).
    x_t = SDXL_SCHEDULER.add_noise(x0, noise, TIMESTEPS)
    for i, t in enumerate(TIMESTEPS.tolist()):
        SDXL_SCHEDULER.set_timesteps(1000)
        step = SDXL_SCHEDULER.step(noise[i : i + 1], t, x_t[i : i + 1])
        torch.testing.assert_close(
            ddpm_x0(x_t[i : i + 1], noise[i : i + 1], abar, TIMESTEPS[i : i + 1], "epsilon"),
            step.pred_original_sample,
            atol=2e-5,
            rtol=1e-5,
        )


def test_ddpm_rejects_unknown_prediction_type():
    x0, noise = _sample()
    with pytest.raises(ValueError, match="unknown prediction_type 'sample'"):
        ddpm_x0(x0, noise, SDXL_SCHEDULER.alphas_cumprod, TIMESTEPS, "sample")
    with pytest.raises(ValueError, match="unknown prediction_type"):
        ddpm_model_target(x0, noise, SDXL_SCHEDULER.alphas_cumprod, TIMESTEPS, "eps")


def test_flow_round_trip_and_endpoints():
    x0, noise = _sample(torch.float64)
    sigmas = torch.tensor([0.0, 0.02, 0.25, 0.5, 0.75, 0.98, 1.0], dtype=torch.float64)
    x_t = flow_add_noise(x0, noise, sigmas)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[-1], noise[-1])
    torch.testing.assert_close(flow_x0(x_t, flow_model_target(x0, noise), sigmas), x0, atol=1e-12, rtol=0)
    # float32 in, float32 out, to float tolerance
    x_t32 = flow_add_noise(x0.float(), noise.float(), sigmas.float())
    estimate = flow_x0(x_t32, flow_model_target(x0.float(), noise.float()), sigmas.float())
    assert estimate.dtype == torch.float32
    torch.testing.assert_close(estimate, x0.float(), atol=1e-5, rtol=0)


def test_sit_round_trip_and_relation_to_flow():
    x0, noise = _sample(torch.float64)
    t = torch.tensor([1.0, 0.98, 0.75, 0.5, 0.25, 0.02, 0.0], dtype=torch.float64)
    x_t = sit_add_noise(x0, noise, t)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[-1], noise[-1])  # t = 1 clean, t = 0 noise
    torch.testing.assert_close(sit_x0(x_t, sit_model_target(x0, noise), t), x0, atol=1e-12, rtol=0)
    # SiT is flow matching run backwards: sigma = 1 - t and the velocity flips sign.
    torch.testing.assert_close(x_t, flow_add_noise(x0, noise, 1 - t))
    torch.testing.assert_close(sit_model_target(x0, noise), -flow_model_target(x0, noise))


def test_shift_noise_level():
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_noise_level(u, 1.0), u)
    shifted = shift_noise_level(u, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted[1:-1] > u[1:-1]).all() and (shifted.diff() > 0).all()
    assert shift_noise_level(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)


def test_sample_noise_levels_range_and_shift():
    gen = torch.Generator().manual_seed(0)
    levels = sample_noise_levels(20000, 0.02, 0.98, generator=gen)
    assert levels.min() >= 0.02 and levels.max() <= 0.98
    assert levels.mean().item() == pytest.approx(0.5, abs=0.01)
    shifted = sample_noise_levels(20000, 0.02, 0.98, shift=5.0, generator=gen)
    assert shifted.min() >= 0.02 and shifted.max() <= 0.98
    assert shifted.mean() > 0.7
    # As DDPM timestep indices: DMD2's [20, 980].
    timesteps = (levels * 1000).long()
    assert timesteps.min() >= 20 and timesteps.max() <= 980


def test_shifted_noise_levels_are_self_forcings_draw():
    # guandeh17/Self-Forcing 33593df, model/dmd.py lines 153-170: t = randint(0, 1000), shifted by 5 (as t / 1000),
    # clamped to [20, 980]. The levels are drawn over the whole [0, 1), then shifted and clamped, so 2% of them fall
    # below shift(0.02) = 0.093 (0.4% on 0.02 itself); a draw over [0.02, 0.98] before the shift never goes there.
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (200000,), generator=gen, dtype=torch.float64)
    self_forcing = ((5 * (t / 1000) / (1 + 4 * (t / 1000)) * 1000).clamp(20, 980) / 1000).float()
    levels = sample_noise_levels(200000, 0.02, 0.98, shift=5.0, generator=gen)
    grid = torch.linspace(0.02, 0.98, 97)
    cdf_gap = max(((levels <= x).double().mean() - (self_forcing <= x).double().mean()).abs().item() for x in grid)
    assert cdf_gap < 0.005  # 200,000 draws of each: a gap of 0.005 is beyond sampling noise and rounding of t
    assert (levels < 0.0926).double().mean().item() == pytest.approx(0.02, abs=0.002)
    assert (levels == 0.02).double().mean().item() == pytest.approx(0.02 / 4.92, abs=0.001)
    assert (levels == 0.98).double().mean().item() == pytest.approx(1 - 0.98 / 1.08, abs=0.003)
    # Without a shift: uniform on [min, max] (DMD2), nothing on the ends.
    assert (sample_noise_levels(20000, 0.02, 0.98, generator=gen) == 0.02).sum() == 0


@pytest.mark.parametrize("low, high, shift", [(0.5, 0.2, None), (-0.1, 0.5, None), (0.1, 1.5, 5.0), (0.1, 0.9, 0.0)])
def test_sample_noise_levels_rejects_bad_arguments(low, high, shift):
    with pytest.raises(ValueError):
        sample_noise_levels(4, low, high, shift=shift)
