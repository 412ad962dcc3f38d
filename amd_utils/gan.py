"""DMD2's GAN term (Yin et al. 2024a; tianweiy/DMD2 8d8fa55): a discriminator head on the fake network's features.

The discriminator is the fake teacher's network (its adapter active) read at its middle, plus a small head: what
DMD2 does with its fake UNet's mid block (``main/sd_guidance.py`` 99-165, ``main/sd_unet_forward.py``
``classify_forward``) and with its EDM fake's bottleneck on ImageNet (``main/edm/edm_guidance.py`` 47-57, 174-190).
Its logit ``l`` is ``log D / (1 - D)``: ``softplus(-l) = -log D``. Both real and generated samples are noised
before they are judged (DMD2's diffusion GAN).
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class DiscriminatorHead(nn.Sequential):
    """DMD2's ``cls_pred_branch`` for square ``size`` x ``size`` features of ``channels`` channels: [Conv 4x4 stride 2
    padding 1, GroupNorm, SiLU] until the side is at most 4 (three times for SDXL's 32 x 32 mid block at 1024 px,
    once for EDM's 8 x 8), then a conv over the whole remaining side (DMD2's Conv 4x4 stride 4) with GroupNorm and
    SiLU, and a 1x1 conv to one logit per sample. GroupNorm has 32 groups as in DMD2 where ``channels`` allows
    (SDXL 1280, SiT-XL 1152, EDM 768), fewer for narrow models but never of one channel, which would normalize the
    1 x 1 map to a constant. Runs in float32 outside autocast, as DMD2's head does."""

    def __init__(self, channels, size):
        groups = math.gcd(32, channels // 2)
        layers = []
        while size > 4:
            layers += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.GroupNorm(groups, channels), nn.SiLU()]
            size = (size - 2) // 2 + 1
        layers += [nn.Conv2d(channels, channels, size, stride=size), nn.GroupNorm(groups, channels), nn.SiLU()]
        super().__init__(*layers, nn.Conv2d(channels, 1, 1))

    def forward(self, features):
        """``(batch, channels, size, size)`` features -> ``(batch,)`` logits."""
        with torch.autocast(features.device.type, enabled=False):
            return super().forward(features.float()).flatten()


def generator_gan_loss(logits):
    """The generator's term, ``-log D(G(z))`` (Eq. 27's F_ext = grad -log D): ``softplus(-l)``, DMD2's
    ``gen_cls_loss``."""
    return F.softplus(-logits).mean()


def discriminator_loss(fake_logits, real_logits):
    """The head's (and the fake's) term, ``-log(1 - D(G(z))) - log D(x)``: DMD2's ``guidance_cls_loss``."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


@contextlib.contextmanager
def output_of(module):
    """Record the output of ``module``'s forwards inside the block in the yielded list (the hook is gone after it,
    so recomputation under gradient checkpointing records nothing)."""
    outputs = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def tokens_to_grid(tokens):
    """A transformer's ``(batch, h * w, channels)`` patch tokens as ``(batch, channels, h, w)`` features (h = w)."""
    side = math.isqrt(tokens.shape[1])
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def sample_gradient_surrogate(sample, loss, sample_leaf):
    """A loss whose gradient with respect to ``sample`` (and so the student's weights) is that of ``loss`` with
    respect to ``sample_leaf``, the detached copy of ``sample`` that ``loss`` was computed from.

    The generator's GAN term is backpropagated this way, by ``torch.autograd.grad`` to the sample alone: the fake
    adapter and the head it passes through get no gradient on the student's turn (they belong to the fake's
    optimizer, and DDP would see their weights used outside its forward)."""
    (gradient,) = torch.autograd.grad(loss, sample_leaf)
    return (sample * gradient.to(sample.dtype)).sum()
