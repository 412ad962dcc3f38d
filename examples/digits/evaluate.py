"""Metrics for the digits demo that never reuse the reward model, plus its mean reward for reference.

- ``fd``: Frechet distance between Gaussians fitted to the judge's 128-d features of the samples and of
  the real digits (the judge is a CNN trained on the half of the digits the reward model never saw);
- ``accuracy``: share of samples the judge classifies as the class they were generated for;
- ``mean_reward``: the training reward (log-probability of the target class under the reward model);
- ``diversity``: mean pixel-space L2 distance between two samples of the same class (real digits: ~2.5).
"""

import torch

from amd_utils.rewards import load_reward

from .prepare import NUM_CLASSES, load_judge


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` for feature sets (N, D) and (M, D).
    ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of ``S_a S_b``, which are
    real and non-negative for covariance matrices (up to round-off, clamped)."""
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_trace = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()
    return ((a.mean(0) - b.mean(0)).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * root_trace).item()


def within_class_diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean L2 distance between two different samples of that class."""
    per_class = []
    for c in labels.unique():
        x = images[labels == c].flatten(1).double()
        n = len(x)
        per_class.append(torch.cdist(x, x).sum() / (n * (n - 1)))
    return torch.stack(per_class).mean().item()


class Evaluator:
    """Holds the judge, the reward and the real digits' features; scores sets of images in [0, 1]."""

    def __init__(self, judge_path, reward_path, real_images):
        self.judge = load_judge(judge_path)
        self.reward = load_reward("dinov2", reward_path)
        self.real_features = self.judge.features(real_images)

    @torch.no_grad()
    def __call__(self, images, labels):
        features = self.judge.features(images)
        return {
            "fd": frechet_distance(features, self.real_features),
            "accuracy": (self.judge.classifier(features).argmax(1) == labels).double().mean().item(),
            "mean_reward": self.reward(images, labels).mean().item(),
            "diversity": within_class_diversity(images, labels),
        }


def sample_per_class(pipe, per_class, seed, **kwargs):
    """``per_class`` samples of every class from a ``SiTPipeline``, the same noise for every pipeline."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(seed)
    images = pipe(class_labels=labels, generator=generator, output_type="pt", **kwargs).images
    return images, labels
