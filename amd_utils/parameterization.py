"""Noising and clean-sample estimates for the three families of models the trainers distill.

Throughout, ``x0`` is the clean sample (DMD's convention) and ``noise`` is standard Gaussian. For each
family: ``*_add_noise`` makes the model input, ``*_model_target`` is what the network is trained to
output (the fake teacher's regression target, Eq. 14), ``*_x0`` turns a network output back into the
clean estimate that the displacements ``d = x - x0_hat`` use.

- DDPM (SDXL): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` on diffusers' discrete schedule,
  epsilon or v prediction; computed in float64 as DMD2 does, since ``1 / sqrt(abar)`` reaches ~15 at t = 999.
- Flow matching (diffusers, Wan): ``x_t = (1 - sigma) x0 + sigma noise``, velocity ``noise - x0``,
  sigma = 1 pure noise.
- SiT's interpolant: ``x_t = t x0 + (1 - t) noise``, velocity ``x0 - noise``, t = 1 clean. (The SiT paper
  calls the clean sample x1 and the noise x0; here x0 stays the clean sample.)
"""

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def _estimate_dtype(x: torch.Tensor) -> torch.dtype:
    # Clean estimates feed differences of nearly equal tensors: never return them in less than float32.
    return torch.promote_types(x.dtype, torch.float32)


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}.")


def _ddpm_coefficients(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor):
    abar = _per_sample(alphas_cumprod.to(device=like.device, dtype=torch.float64)[timesteps.to(like.device)], like)
    return abar.sqrt(), (1.0 - abar).sqrt()


def ddpm_add_noise(x0, noise, alphas_cumprod, timesteps):
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``, as ``DDPMScheduler.add_noise``; returned in x0's dtype."""
    signal, sigma = _ddpm_coefficients(alphas_cumprod, timesteps, x0)
    return (signal * x0.double() + sigma * noise.double()).to(x0.dtype)


def ddpm_model_target(x0, noise, alphas_cumprod, timesteps, prediction_type: str):
    """The output a DDPM network is trained to give: the noise (epsilon) or
    ``v = sqrt(abar) noise - sqrt(1 - abar) x0`` (v_prediction)."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    signal, sigma = _ddpm_coefficients(alphas_cumprod, timesteps, x0)
    return (signal * noise.double() - sigma * x0.double()).to(x0.dtype)


def ddpm_x0(x_t, model_output, alphas_cumprod, timesteps, prediction_type: str):
    """Clean estimate from a DDPM network output, in float64 then returned in at least float32:
    epsilon: ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``; v_prediction: ``sqrt(abar) x_t - sqrt(1 - abar) v``."""
    _check_prediction_type(prediction_type)
    signal, sigma = _ddpm_coefficients(alphas_cumprod, timesteps, x_t)
    if prediction_type == "epsilon":
        x0 = (x_t.double() - sigma * model_output.double()) / signal
    else:
        x0 = signal * x_t.double() - sigma * model_output.double()
    return x0.to(_estimate_dtype(x_t))


def flow_add_noise(x0, noise, sigmas):
    """``(1 - sigma) x0 + sigma noise`` (diffusers' flow matching; sigma = 1 is pure noise)."""
    sigmas = _per_sample(sigmas, x0).to(x0.dtype)
    return (1.0 - sigmas) * x0 + sigmas * noise


def flow_model_target(x0, noise):
    """Flow-matching velocity ``noise - x0``."""
    return noise - x0


def flow_x0(x_t, velocity, sigmas):
    """``x_t - sigma * v``, in at least float32."""
    dtype = _estimate_dtype(x_t)
    return x_t.to(dtype) - _per_sample(sigmas, x_t).to(dtype) * velocity.to(dtype)


def sit_add_noise(x0, noise, t):
    """SiT's linear interpolant ``t x0 + (1 - t) noise`` (t = 1 clean, t = 0 pure noise)."""
    t = _per_sample(t, x0).to(x0.dtype)
    return t * x0 + (1.0 - t) * noise


def sit_model_target(x0, noise):
    """SiT's velocity ``x0 - noise`` (clean minus noise)."""
    return x0 - noise


def sit_x0(x_t, velocity, t):
    """``x_t + (1 - t) v``, in at least float32."""
    dtype = _estimate_dtype(x_t)
    return x_t.to(dtype) + (1.0 - _per_sample(t, x_t).to(dtype)) * velocity.to(dtype)


def shift_noise_level(level: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3 / Wan: ``shift * u / (1 + (shift - 1) * u)``; moves noise levels in
    [0, 1] towards noise for shift > 1, identity at shift = 1."""
    return shift * level / (1.0 + (shift - 1.0) * level)


def sample_noise_levels(
    batch_size: int,
    min_level: float,
    max_level: float,
    shift: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise levels for scoring the student (0 clean, 1 pure noise), drawn as the public DMD recipes draw them.

    Without a ``shift`` (DMD2): uniform in ``[min, max]``, as DMD2's ``randint(min_step, max_step + 1)``.
    With a ``shift`` (Self-Forcing, for Wan): ``u ~ U[0, 1)`` over the whole range, shifted with
    :func:`shift_noise_level`, then clamped into ``[min, max]``, as guandeh17/Self-Forcing 33593df ``model/dmd.py``
    lines 153-170 draws ``randint(0, 1000)``, shifts and clamps to ``[min_step, max_step]``. The draws that the shift
    leaves outside the range land on its ends: at shift 5 and [0.02, 0.98], 0.4% on 0.02 and 9.3% on 0.98.

    A flow model uses the level as sigma, SiT as ``t = 1 - level``, a DDPM model as the timestep index
    ``level * num_train_timesteps`` (e.g. [0.02, 0.98] gives DMD2's t in [20, 980])."""
    if not 0.0 <= min_level <= max_level <= 1.0:
        raise ValueError(f"noise levels need 0 <= min <= max <= 1, got min={min_level}, max={max_level}.")
    if shift is not None and shift <= 0:
        raise ValueError(f"the timestep shift must be positive, got {shift}.")
    u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    if shift is None:
        return (min_level + (max_level - min_level) * u).float()
    return shift_noise_level(u, shift).clamp(min_level, max_level).float()
