import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from amd_utils.objective import (
    OPERATORS,
    adaptive_coefficients,
    cfg_augmentation_term,
    compose_gradient,
    distribution_matching_term,
    fake_sample_weights,
    generator_loss,
    group_advantages,
    guided,
    normalize_per_sample,
    standardize_in_groups,
    student_loss,
    weighted_denoising_loss,
)

# ---------------------------------------------------------------- Eq. 12: group-relative advantages


def test_advantages_hand_computed():
    # Group 1: mean 1, population std sqrt(3): z = [-1/sqrt3]*3 + [sqrt3], the last clipped to 1.
    # Group 2: two samples, z = -1, +1 exactly.
    rewards = torch.tensor([0.0, 0.0, 0.0, 4.0, 5.0, 7.0, 5.0, 7.0]).reshape(-1)
    a = group_advantages(rewards[:4], group_size=4)
    expected = torch.tensor([-1 / math.sqrt(3)] * 3 + [1.0])
    torch.testing.assert_close(a, expected, atol=1e-5, rtol=0)
    b = group_advantages(rewards[4:], group_size=2)
    torch.testing.assert_close(b, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-5, rtol=0)


def test_advantages_of_equal_rewards_are_zero():
    # 0.1 * 3 / 3 != 0.1 in floating point: the mean is off by one ulp, yet the advantages must be exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1e6, 1e6, 1e6, 2.0, 3.0, 4.0], dtype=torch.float64)
    a = group_advantages(rewards, group_size=3)
    assert torch.isfinite(a).all()
    assert torch.equal(a[:6], torch.zeros(6, dtype=torch.float64))
    assert a[6] < 0 < a[8] and a[7] == 0


def test_advantages_are_per_group():
    # Adding a constant to one group's rewards (a prompt that is easier) changes nothing.
    rewards = torch.randn(12)
    shifted = rewards.clone()
    shifted[4:8] += 100.0
    torch.testing.assert_close(group_advantages(rewards, 4), group_advantages(shifted, 4), atol=1e-4, rtol=0)


def test_non_finite_rewards_get_advantage_zero_and_leave_their_group_ranked():
    # Group 1: a NaN among (1, 3): the others are ranked as a group of two, -1 and +1. Group 2: only one
    # finite reward left, nothing to rank against: all 0. Group 3: untouched.
    rewards = torch.tensor([1.0, float("nan"), 3.0, 5.0, float("inf"), float("-inf"), 2.0, 4.0, 0.0])
    a = group_advantages(rewards, group_size=3)
    torch.testing.assert_close(a[:6], torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(a[6:], group_advantages(torch.tensor([2.0, 4.0, 0.0]), group_size=3))
    assert fake_sample_weights(a)[1] == 1  # W = exp(-0): the failed sample is neither pushed nor pulled


def test_student_loss_takes_operator_scale_and_sensitivity_by_name_only():
    x = torch.zeros(1, 2)
    with pytest.raises(TypeError):
        student_loss(x, x, x, x, torch.zeros(1), "amd", 0.5, 3.0)  # two floats that could be swapped


@st.composite
def grouped_rewards(draw):
    """(K, rewards of 1 to 5 groups of K)."""
    k = draw(st.integers(2, 9))
    groups = draw(st.integers(1, 5))
    return k, draw(st.lists(st.floats(-1e4, 1e4), min_size=k * groups, max_size=k * groups))


@settings(max_examples=200, deadline=None)
@given(grouped_rewards())
@example((2, [10000.0, 9999.999999999998]))  # a near tie: the group mean's rounding, divided by a tiny std + eps
def test_standardized_rewards_zero_mean_and_advantages_bounded(case):
    k, values = case
    rewards = torch.tensor(values, dtype=torch.float64)
    z = standardize_in_groups(rewards, k)
    # The group mean is exact up to about k roundings of numbers as large as max |r|, and each z carries that
    # error divided by (std + eps), which is large when the rewards nearly tie; each z rounds once more.
    grouped, z_grouped = rewards.reshape(-1, k), z.reshape(-1, k)
    unit = torch.finfo(torch.float64).eps
    bound = (
        4
        * k
        * unit
        * (grouped.abs().amax(dim=1) / (grouped.std(dim=1, unbiased=False) + 1e-6) + z_grouped.abs().amax(dim=1))
    )
    assert (z_grouped.mean(dim=1).abs() <= bound).all()
    a = group_advantages(rewards, k)
    assert torch.isfinite(a).all()
    assert a.min() >= -1 and a.max() <= 1
    # The clip only caps: where |z| <= 1 the advantage is z itself.
    inside = z.abs() <= 1
    torch.testing.assert_close(a[inside], z[inside])


@pytest.mark.parametrize(
    "rewards, k, message",
    [
        (torch.randn(8), 1, "group_size must be at least 2"),
        (torch.randn(8), 0, "group_size must be at least 2"),
        (torch.randn(10), 4, "not a whole number of groups of 4"),
        (torch.randn(0), 2, "not a whole number of groups"),
        (torch.randn(4, 2), 2, "one value per sample"),
    ],
)
def test_advantages_reject_bad_groups(rewards, k, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, k)


# ---------------------------------------------------------------- Eq. 13


def test_adaptive_coefficients():
    a = torch.tensor([-1.0, 0.0, 0.5])
    alpha, beta = adaptive_coefficients(a, sensitivity=0.4)
    torch.testing.assert_close(alpha, torch.tensor([0.6, 1.0, 1.2]))
    torch.testing.assert_close(beta, torch.tensor([1.4, 1.0, 0.8]))
    alpha, beta = adaptive_coefficients(a, sensitivity=0.0)
    assert torch.equal(alpha, torch.ones(3)) and torch.equal(beta, torch.ones(3))
    with pytest.raises(ValueError, match="sensitivity"):
        adaptive_coefficients(a, -0.1)


# ---------------------------------------------------------------- Eqs. 7-10: the operators


def _dyadic(*shape, generator):
    # Small multiples of 1/4: every sum and product below is exact in float64.
    return torch.randint(-40, 40, shape, generator=generator).double() / 4


def test_dm_plus_ca_equals_dmd_exactly():
    gen = torch.Generator().manual_seed(0)
    cond, uncond, fake = (_dyadic(3, 4, 5, 5, generator=gen) for _ in range(3))
    for w in (1.0, 2.5, 8.0):
        lhs = distribution_matching_term(cond, fake) + cfg_augmentation_term(cond, uncond, w)
        assert torch.equal(lhs, guided(cond, uncond, w) - fake)  # Eq. 9
    # and to rounding on arbitrary values
    cond, uncond, fake = (torch.randn(3, 4, 5, 5, dtype=torch.float64, generator=gen) for _ in range(3))
    lhs = distribution_matching_term(cond, fake) + cfg_augmentation_term(cond, uncond, 4.5)
    torch.testing.assert_close(lhs, guided(cond, uncond, 4.5) - fake, atol=1e-12, rtol=0)


def test_operators_agree_when_sensitivity_is_zero():
    gen = torch.Generator().manual_seed(1)
    cond, uncond, fake = (_dyadic(6, 4, 3, 3, generator=gen) for _ in range(3))
    alpha, beta = adaptive_coefficients(torch.rand(6, generator=gen) * 2 - 1, sensitivity=0.0)
    g = {op: compose_gradient(op, cond, uncond, fake, 8.0, alpha, beta) for op in OPERATORS}
    assert torch.equal(g["dmd"], g["naive"]) and torch.equal(g["dmd"], g["amd"])


def test_operators_give_identical_parameter_gradients_when_sensitivity_is_zero():
    # The whole student step: same x0 estimates, s = 0, the three operators, one backward pass each.
    gen = torch.Generator().manual_seed(2)
    student = torch.nn.Linear(8, 2 * 3 * 3, dtype=torch.float64)
    z = torch.randn(8, 8, dtype=torch.float64, generator=gen)
    x0_cond, x0_uncond, x0_fake = (torch.randn(8, 2, 3, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    advantages = group_advantages(torch.randn(8, generator=gen), group_size=4)
    alpha, beta = adaptive_coefficients(advantages, sensitivity=0.0)
    grads = {}
    for op in OPERATORS:
        student.zero_grad()
        x = student(z).reshape(8, 2, 3, 3)
        d_cond, d_uncond, d_fake = (x.detach() - x0 for x0 in (x0_cond, x0_uncond, x0_fake))
        g = compose_gradient(op, d_cond, d_uncond, d_fake, 5.0, alpha, beta)
        generator_loss(x, normalize_per_sample(g, guided(d_cond, d_uncond, 5.0))).backward()
        grads[op] = torch.cat([p.grad.flatten() for p in student.parameters()])
    assert grads["dmd"].abs().sum() > 0
    torch.testing.assert_close(grads["naive"], grads["dmd"], atol=1e-14, rtol=0)
    torch.testing.assert_close(grads["amd"], grads["dmd"], atol=1e-14, rtol=0)


def test_operators_hand_computed():
    cond, uncond, fake = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    alpha, beta = adaptive_coefficients(torch.tensor([0.5]), sensitivity=1.0)  # 1.5, 0.5
    assert compose_gradient("dmd", cond, uncond, fake, 3.0, alpha, beta).item() == 1.0  # 3 - 2
    assert compose_gradient("naive", cond, uncond, fake, 3.0, alpha, beta).item() == 3.5  # 1.5*3 - 0.5*2
    assert compose_gradient("amd", cond, uncond, fake, 3.0, alpha, beta).item() == 2.5  # 0.5*(1-2) + 1.5*2*1


def test_only_naive_depends_on_where_the_sample_is():
    # With the clean estimates fixed, moving x by c leaves dmd and amd unchanged (x cancels in
    # d_real - d_fake), while naive picks up (alpha - beta) * c = 2 s a c: a pull towards (a > 0) or
    # push away from (a < 0) the origin that has nothing to do with either teacher.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    x0_cond, x0_uncond, x0_fake = (torch.randn(4, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    a = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=torch.float64)
    alpha, beta = adaptive_coefficients(a, sensitivity=0.3)
    shift = torch.tensor([[3.0, -1.0]], dtype=torch.float64)

    def g(op, x):
        return compose_gradient(op, x - x0_cond, x - x0_uncond, x - x0_fake, 2.0, alpha, beta)

    for op in ("dmd", "amd"):
        torch.testing.assert_close(g(op, x + shift), g(op, x), atol=1e-12, rtol=0)
    torch.testing.assert_close(g("naive", x + shift) - g("naive", x), (2 * 0.3 * a)[:, None] * shift)


def test_compose_without_unconditional_pass():
    cond, fake = torch.randn(2, 3), torch.randn(2, 3)
    alpha, beta = adaptive_coefficients(torch.tensor([1.0, -1.0]), 0.5)
    for op in OPERATORS:
        assert torch.equal(
            compose_gradient(op, cond, None, fake, 1.0, alpha, beta),
            compose_gradient(op, cond, cond, fake, 1.0, alpha, beta),
        )
    with pytest.raises(ValueError, match="needs the unconditional"):
        compose_gradient("amd", cond, None, fake, 2.0, alpha, beta)
    with pytest.raises(ValueError, match="unknown operator 'sid'"):
        compose_gradient("sid", cond, cond, fake, 1.0, alpha, beta)


# ---------------------------------------------------------------- DMD2 normalization and the generator loss


def test_normalize_per_sample_hand_computed():
    g = torch.tensor([[2.0, 4.0], [1.0, 1.0], [3.0, -3.0]])
    d_real = torch.tensor([[1.0, -3.0], [0.5, 0.5], [0.0, 0.0]])
    out = normalize_per_sample(g, d_real)
    # mean |d|: 2, 0.5, 0 -> the last sample has nothing to scale by and contributes no gradient.
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [2.0, 2.0], [0.0, 0.0]]))


def test_normalize_per_sample_over_all_non_batch_dims():
    g, d_real = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    expected = g / d_real.abs().flatten(1).mean(dim=1).reshape(3, 1, 1, 1)
    torch.testing.assert_close(normalize_per_sample(g, d_real), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generator_loss_gradient_is_g_over_numel(dtype):
    x = torch.randn(4, 3, 5, 5, dtype=dtype, requires_grad=True)
    g = torch.randn(4, 3, 5, 5, dtype=dtype)
    generator_loss(x, g).backward()
    torch.testing.assert_close(x.grad, g / x.numel())


def test_generator_loss_keeps_small_gradients_under_bf16():
    x = (torch.randn(2, 64) * 50).bfloat16().requires_grad_()
    g = torch.full((2, 64), 1e-3)  # far below bf16's resolution at |x| ~ 50
    generator_loss(x, g).backward()
    torch.testing.assert_close(x.grad.float(), g / x.numel(), rtol=1e-2, atol=0)


# ---------------------------------------------------------------- Eq. 14: the fake teacher


def test_fake_sample_weights():
    a = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(fake_sample_weights(a, sharpen=True), torch.tensor([math.e, 1.0, 1 / math.e]))
    assert torch.equal(fake_sample_weights(a, sharpen=False), torch.ones(3))


def test_weighted_denoising_loss():
    prediction, target = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(
        weighted_denoising_loss(prediction, target, torch.ones(3)), F.mse_loss(prediction, target)
    )
    per_sample = (prediction - target).pow(2).flatten(1).mean(dim=1)
    weights = torch.tensor([0.5, 2.0, 0.0])
    torch.testing.assert_close(weighted_denoising_loss(prediction, target, weights), (weights * per_sample).mean())


def test_student_loss_pushes_the_composed_and_normalized_gradient_hand_computed():
    # One sample of two elements, x = (1, 2); real cond / uncond / fake estimates chosen by hand.
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    x0_cond, x0_uncond, x0_fake = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 3.0]])
    # d_cond = (1, 2), d_uncond = (0, 1), d_fake = (0, -1); w = 3, a = 1, s = 0.5: alpha = 1.5, beta = 0.5.
    # amd: 0.5 * (1, 3) + 1.5 * 2 * (1, 1) = (3.5, 4.5); d_cfg = (0, 1) + 3 * (1, 1) = (3, 4), mean |d_cfg| = 3.5.
    student_loss(
        x, x0_cond, x0_uncond, x0_fake, torch.tensor([1.0]), operator="amd", guidance_scale=3.0, sensitivity=0.5
    ).backward()
    torch.testing.assert_close(x.grad, torch.tensor([[3.5, 4.5]]) / 3.5 / 2)
    # dmd ignores the advantage: d_cfg - d_fake = (3, 5).
    x.grad = None
    student_loss(
        x, x0_cond, x0_uncond, x0_fake, torch.tensor([1.0]), operator="dmd", guidance_scale=3.0, sensitivity=0.5
    ).backward()
    torch.testing.assert_close(x.grad, torch.tensor([[3.0, 5.0]]) / 3.5 / 2)
