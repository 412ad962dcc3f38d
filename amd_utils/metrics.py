"""Set-level image metrics from features: Frechet distance (FID and the digits' FD) and Inception Score."""

import torch


def feature_statistics(features: torch.Tensor):
    """Mean and covariance (unbiased, float64) of features (N, D)."""
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` between two Gaussians.
    ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of ``S_a S_b``, which are real
    and non-negative for covariance matrices (up to round-off, clamped)."""
    mu_a, cov_a, mu_b, cov_b = (torch.as_tensor(x, dtype=torch.float64) for x in (mu_a, cov_a, mu_b, cov_b))
    root_trace = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * root_trace).item()


def inception_score(logits: torch.Tensor, splits: int = 10):
    """Mean and standard deviation over ``splits`` consecutive chunks of ``exp(E_x KL(p(y|x) || p(y)))``,
    with p(y) the chunk's mean prediction (Salimans et al., 2016; torch-fidelity's splits, unshuffled)."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for chunk in log_p.chunk(splits):
        log_marginal = torch.logsumexp(chunk, dim=0) - torch.log(torch.tensor(float(len(chunk)), dtype=torch.float64))
        kl = (chunk.exp() * (chunk - log_marginal)).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return scores.mean().item(), (scores.std(unbiased=False).item() if len(scores) > 1 else 0.0)
