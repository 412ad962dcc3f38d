"""Metrics for the digits demo that never reuse the reward model, plus its mean reward for reference.

- ``fd``: Frechet distance between Gaussians fitted to the judge's 128-d features of the samples and of
  the real digits (the judge is a CNN trained on the half of the digits the reward model never saw);
- ``accuracy``: share of samples the judge classifies as the class they were generated for;
- ``mean_reward``: the training reward (log-probability of the target class under the reward model);
- ``diversity``: mean pixel-space L2 distance between two samples of the same class (real digits: ~2.5).
"""

import torch

from amd_utils.metrics import feature_statistics, frechet_distance
from amd_utils.rewards import load_reward

from .prepare import NUM_CLASSES, load_judge


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
        self.real_statistics = feature_statistics(self.judge.features(real_images))

    @torch.no_grad()
    def __call__(self, images, labels):
        features = self.judge.features(images)
        return {
            "fd": frechet_distance(*feature_statistics(features), *self.real_statistics),
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
