"""Frechet distance and Inception Score against hand-computed values and scipy's matrix square root."""

import math

import pytest
import torch
from scipy.linalg import sqrtm

from amd_utils.metrics import feature_statistics, frechet_distance, inception_score


def fd(a, b):
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def test_frechet_distance_identities():
    torch.manual_seed(0)
    a = torch.randn(500, 6) @ torch.randn(6, 6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert fd(a, a) == pytest.approx(0.0, abs=1e-8)
    # Same covariance: only the means differ.
    assert fd(a, a + shift) == pytest.approx(shift.pow(2).sum().item(), rel=1e-8)
    # b = 2a: cov_b = 4 S, tr((S 4S)^(1/2)) = 2 tr(S), so FD = |mu|^2 + tr(S) + 4 tr(S) - 4 tr(S).
    expected = a.double().mean(0).pow(2).sum() + torch.cov(a.double().T).trace()
    assert fd(a, 2 * a) == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_distance_matches_the_matrix_square_root():
    torch.manual_seed(1)
    a, b = torch.randn(300, 5) @ torch.randn(5, 5), torch.randn(400, 5) @ torch.randn(5, 5) + 1
    cov_a, cov_b = torch.cov(a.double().T).numpy(), torch.cov(b.double().T).numpy()
    expected = (a.double().mean(0) - b.double().mean(0)).pow(2).sum().item() + cov_a.trace() + cov_b.trace()
    expected -= 2 * sqrtm(cov_a @ cov_b).real.trace()
    assert fd(a, b) == pytest.approx(expected, rel=1e-6)
    # Statistics given as numpy arrays (a reference .npz) give the same distance.
    mu_b, cov_b_torch = feature_statistics(b)
    assert frechet_distance(*feature_statistics(a), mu_b.numpy(), cov_b) == pytest.approx(fd(a, b), rel=1e-12)


def test_inception_score_hand_computed():
    # Identical predictions: p(y|x) = p(y), KL 0, score 1.
    assert inception_score(torch.randn(1, 7).expand(40, 7), splits=4) == pytest.approx((1.0, 0.0), abs=1e-9)
    # Confident predictions spread evenly over C classes: KL = log C, score C.
    logits = 60.0 * torch.eye(5).repeat(6, 1)  # 30 samples, each split of 10 holds every class twice
    mean, std = inception_score(logits, splits=3)
    assert mean == pytest.approx(5.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Two samples, p1 = (3/4, 1/4), p2 = (1/4, 3/4): p(y) = (1/2, 1/2), KL = 3/4 log 3/2 + 1/4 log 1/2 each.
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    expected = math.exp(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert inception_score(logits, splits=1) == pytest.approx((expected, 0.0), rel=1e-9)
