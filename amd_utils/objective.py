"""The AMD objective (Bai et al., arXiv 2602.07345, Sections 3.2-3.3, Algorithm 1) as pure functions.

Tensors in, tensors out: every trainer and the 2D study call these same functions.

Conventions:
- A batch holds ``num_groups * K`` samples laid out group by group: samples ``[g*K, (g+1)*K)`` share a
  prompt or class label (``prompts.repeat_interleave(K)``).
- A displacement is ``d = x - x0_hat``: the student sample minus a teacher's clean estimate of it.
- Classifier-free guidance is the standard form ``uncond + w * (cond - uncond)``; ``w = 1`` is no guidance.
  (Some public DMD code for Wan writes ``cond + w * (cond - uncond)``, which is this form at ``w + 1``.)
"""

import torch
import torch.nn.functional as F

OPERATORS = ("dmd", "naive", "amd")


def standardize_in_groups(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """``(r - mean_g) / (std_g + eps)`` within each group of ``group_size`` consecutive samples (the
    inside of Eq. 12), with ``std_g`` the population standard deviation. A group whose rewards are all
    equal carries no ranking information: its values are defined as exactly 0. A non-finite reward (a
    reward model that failed on a sample) gets 0 and is left out of its group's mean and std."""
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare samples within a group, got {group_size}.")
    if rewards.ndim != 1:
        raise ValueError(
            f"rewards must be one value per sample, shape (num_groups * K,), got shape {tuple(rewards.shape)}."
        )
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"the batch of {rewards.numel()} rewards is not a whole number of groups of {group_size}: "
            "make the batch size a multiple of the group size."
        )
    grouped = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).reshape(-1, group_size)
    finite = torch.isfinite(grouped)
    count = finite.sum(dim=1, keepdim=True).clamp(min=1)
    mean = torch.where(finite, grouped, 0.0).sum(dim=1, keepdim=True) / count
    std = (torch.where(finite, grouped - mean, 0.0).square().sum(dim=1, keepdim=True) / count).sqrt()
    highest = torch.where(finite, grouped, -torch.inf).amax(dim=1, keepdim=True)
    lowest = torch.where(finite, grouped, torch.inf).amin(dim=1, keepdim=True)
    informative = finite & (highest > lowest)  # at least two different finite rewards in the group
    return torch.where(informative, (grouped - mean) / (std + eps), 0.0).reshape(-1)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages, Eq. 12: ``clip((r - mean_g) / (std_g + eps), -1, 1)``, laid out like
    ``rewards``; see :func:`standardize_in_groups` for the groups and the all-equal case."""
    return standardize_in_groups(rewards, group_size, eps).clamp(-1.0, 1.0)


def adaptive_coefficients(advantages: torch.Tensor, sensitivity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 13: ``alpha = 1 + s * a`` (weights the CFG / attractive part), ``beta = 1 - s * a``."""
    if sensitivity < 0:
        raise ValueError(f"sensitivity s must be >= 0 (Eq. 13 takes s in R+), got {sensitivity}.")
    return 1.0 + sensitivity * advantages, 1.0 - sensitivity * advantages


def guided(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Standard classifier-free guidance ``uncond + w * (cond - uncond)``; linear, so it applies to
    x0 estimates, displacements, noise and velocity predictions alike."""
    return uncond + guidance_scale * (cond - uncond)


def distribution_matching_term(d_real_cond: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """DM term of Eq. 9: ``d_real_cond - d_fake``."""
    return d_real_cond - d_fake


def cfg_augmentation_term(
    d_real_cond: torch.Tensor, d_real_uncond: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """CA term of Eq. 9: ``(w - 1) * (d_real_cond - d_real_uncond)``."""
    return (guidance_scale - 1.0) * (d_real_cond - d_real_uncond)


def _per_sample(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coefficient.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def compose_gradient(
    operator: str,
    d_real_cond: torch.Tensor,
    d_real_uncond: torch.Tensor | None,
    d_fake: torch.Tensor,
    guidance_scale: float,
    alpha: torch.Tensor,
    beta: torch.Tensor,
) -> torch.Tensor:
    """The sample-space gradient g of the student loss, for the operator H chosen (Eq. 6 with F_ext = 0).

    - ``dmd``:   ``d_real_cfg - d_fake``                                                  (Eq. 7)
    - ``naive``: ``alpha * d_real_cfg - beta * d_fake``                                   (Eq. 8)
    - ``amd``:   ``beta * (d_real_cond - d_fake) + alpha * (w - 1) * (d_real_cond - d_real_uncond)``   (Eq. 10)

    with ``d_real_cfg = d_real_uncond + w * (d_real_cond - d_real_uncond)`` (standard CFG, Eq. 9) and
    ``alpha``, ``beta`` of shape (B,) from :func:`adaptive_coefficients` (``dmd`` ignores them).
    ``d_real_uncond`` may be None when ``guidance_scale == 1`` (no guidance, no unconditional pass needed).
    """
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}: choose one of {', '.join(OPERATORS)}.")
    if d_real_uncond is None:
        if guidance_scale != 1:
            raise ValueError(f"guidance_scale {guidance_scale} needs the unconditional displacement d_real_uncond.")
        d_real_uncond = d_real_cond
    if operator == "dmd":
        return guided(d_real_cond, d_real_uncond, guidance_scale) - d_fake  # Eq. 7
    alpha, beta = _per_sample(alpha, d_fake), _per_sample(beta, d_fake)
    if operator == "naive":
        return alpha * guided(d_real_cond, d_real_uncond, guidance_scale) - beta * d_fake  # Eq. 8
    dm_term = distribution_matching_term(d_real_cond, d_fake)
    ca_term = cfg_augmentation_term(d_real_cond, d_real_uncond, guidance_scale)
    return beta * dm_term + alpha * ca_term  # Eq. 10


def normalize_per_sample(g: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """DMD2's per-sample normalization: ``g / mean(|x - x0_real|)`` over the non-batch dims.

    ``d_real`` is the guided real displacement (the one DMD2 divides by), whatever the operator, so the
    operators differ only in the direction they compose. A sample whose real displacement is exactly 0
    would divide by zero; ``nan_to_num`` maps its NaN/inf to 0 so that it adds no gradient (DMD2 maps
    inf to the largest float, which would blow up the step instead).
    """
    scale = d_real.abs().mean(dim=tuple(range(1, d_real.ndim)), keepdim=True)
    return torch.nan_to_num(g / scale, nan=0.0, posinf=0.0, neginf=0.0)


def generator_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``0.5 * mse(x, (x - g).detach())``: a surrogate whose gradient w.r.t. x is ``g / x.numel()``,
    so backprop pushes ``g`` through the student (Eq. 2, 16 of Algorithm 1). Computed in at least float32
    so that ``x - g`` does not round away small gradients under bf16."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    return 0.5 * F.mse_loss(x, (x - g.to(dtype)).detach(), reduction="mean")


def fake_sample_weights(advantages: torch.Tensor, sharpen: bool = True) -> torch.Tensor:
    """Repulsive Landscape Sharpening weights, Eq. 14: ``W(a) = exp(-a)``; all ones when ``sharpen`` is off."""
    return torch.exp(-advantages) if sharpen else torch.ones_like(advantages)


def weighted_denoising_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The fake teacher's loss, Eq. 14: ``mean_i W_i * ||target_i - prediction_i||^2`` with the squared
    error averaged over each sample's elements. Computed in float32 at least."""
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    per_sample = (prediction.to(dtype) - target.to(dtype)).pow(2).mean(dim=tuple(range(1, prediction.ndim)))
    return (weights.to(dtype) * per_sample).mean()


def student_loss(
    x: torch.Tensor,
    x0_real_cond: torch.Tensor,
    x0_real_uncond: torch.Tensor,
    x0_fake: torch.Tensor,
    advantages: torch.Tensor,
    *,
    operator: str,
    guidance_scale: float,
    sensitivity: float,
) -> torch.Tensor:
    """The student's loss for a batch of its samples ``x`` (with grad) and the teachers' clean estimates of
    their re-noised copies: displacements of the detached samples, alpha and beta (Eq. 13), the operator
    (Eqs. 7, 8, 10), DMD2's normalization, and the surrogate whose gradient in x is g (Eq. 2)."""
    sample = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    d_cond, d_uncond, d_fake = sample - x0_real_cond, sample - x0_real_uncond, sample - x0_fake
    alpha, beta = adaptive_coefficients(advantages, sensitivity)
    g = compose_gradient(operator, d_cond, d_uncond, d_fake, guidance_scale, alpha, beta)
    return generator_loss(x, normalize_per_sample(g, guided(d_cond, d_uncond, guidance_scale)))
