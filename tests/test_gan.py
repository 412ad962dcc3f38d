"""DMD2's GAN term (amd_utils.gan): the head's layers against DMD2's, its float32 island under autocast, the losses
by hand, the token grid against a patch embedding, and the surrogate that backpropagates the generator's term to
the sample alone."""

import math

import pytest
import torch
from torch import nn

from amd_utils.gan import (
    DiscriminatorHead,
    discriminator_loss,
    generator_gan_loss,
    output_of,
    sample_gradient_surrogate,
    tokens_to_grid,
)


def layer_summary(head):
    return [
        (type(m).__name__, m.kernel_size, m.stride, m.padding) if isinstance(m, nn.Conv2d) else type(m).__name__
        for m in head
    ]


@pytest.mark.parametrize(
    "size, stride_two_convs, last_kernel",
    [(32, 3, 4), (8, 1, 4), (16, 2, 4), (4, 0, 4), (2, 0, 2), (6, 1, 3)],
    ids=["sdxl-1024px", "edm-imagenet", "sit-xl-256px", "tiny-sdxl", "tiny-sit", "odd"],
)
def test_head_layers_follow_dmd2(size, stride_two_convs, last_kernel):
    # DMD2 SDXL (main/sd_guidance.py 108-121): 3 x [conv 4/2/1, GN, SiLU], conv 4/4/0, GN, SiLU, conv 1x1 on 32 x 32;
    # EDM (main/edm/edm_guidance.py 47-55): one [conv 4/2/1, GN, SiLU] on 8 x 8, then the same tail.
    head = DiscriminatorHead(64, size)
    down = [("Conv2d", (4, 4), (2, 2), (1, 1)), "GroupNorm", "SiLU"] * stride_two_convs
    tail = [("Conv2d", (last_kernel,) * 2, (last_kernel,) * 2, (0, 0)), "GroupNorm", "SiLU"]
    assert layer_summary(head) == down + tail + [("Conv2d", (1, 1), (1, 1), (0, 0))]
    assert head[-1].out_channels == 1
    assert head(torch.randn(3, 64, size, size)).shape == (3,)


def test_head_group_norm_has_dmd2s_32_groups_where_it_can():
    assert DiscriminatorHead(1280, 32)[1].num_groups == 32
    assert DiscriminatorHead(1152, 16)[1].num_groups == 32  # SiT-XL/2's width
    assert DiscriminatorHead(16, 2)[1].num_groups == 8  # the tiny SiT's 16 channels: two per group


def test_the_logit_depends_on_the_features_for_narrow_heads():
    # One channel per group would normalize the 1 x 1 map after the last 4 x 4 conv to a constant logit.
    torch.manual_seed(0)
    for channels in (2, 16, 64):
        head = DiscriminatorHead(channels, 4)
        features = torch.randn(2, channels, 4, 4)
        assert (head(features)[0] - head(features)[1]).abs() > 1e-6, channels


def test_head_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    head = DiscriminatorHead(32, 8)
    features = torch.randn(2, 32, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features.bfloat16())
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(features.bfloat16().float()), rtol=0, atol=0)


def test_losses_by_hand():
    # l = log(D / (1 - D)): l = 0 is D = 1/2, l = log 3 is D = 3/4.
    logits = torch.tensor([0.0, math.log(3.0)])
    assert generator_gan_loss(logits).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)  # -log D
    fake, real = torch.tensor([math.log(3.0)]), torch.tensor([0.0])
    assert discriminator_loss(fake, real).item() == pytest.approx(math.log(4) + math.log(2))  # -log(1 - D), -log D


def test_generator_loss_is_eq_27s_force():
    # Eq. 27: F = grad_x(-log D(x)); through the logit, d(-log D)/dl = -(1 - D).
    logits = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    (generator_gan_loss(logits) * 3).backward()
    torch.testing.assert_close(logits.grad, -(1 - torch.sigmoid(logits.detach())))


def test_tokens_to_grid_inverts_a_patch_embedding():
    # DiT's PatchEmbed: conv, then flatten(2).transpose(1, 2): token r * w + c is the patch in row r, column c.
    conv = nn.Conv2d(3, 8, 2, stride=2)
    grid = conv(torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(tokens_to_grid(grid.flatten(2).transpose(1, 2)), grid, rtol=0, atol=0)


def test_output_of_records_inside_the_block_only():
    layer = nn.Linear(2, 2)
    with output_of(layer) as outputs:
        y = layer(torch.ones(1, 2))
    layer(torch.zeros(1, 2))
    assert len(outputs) == 1 and outputs[0] is y


def test_the_surrogate_gives_the_student_the_gan_gradient_and_the_judge_none():
    torch.manual_seed(0)
    student, judge = nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))
    z = torch.randn(5, 4)
    direct = torch.autograd.grad(generator_gan_loss(judge(student(z)).flatten()), list(student.parameters()))
    sample = student(z)
    leaf = sample.detach().requires_grad_()
    surrogate = sample_gradient_surrogate(sample, generator_gan_loss(judge(leaf).flatten()), leaf)
    surrogate.backward()
    for param, expected in zip(student.parameters(), direct):
        torch.testing.assert_close(param.grad, expected)
    assert all(param.grad is None for param in judge.parameters())
