"""Log densities used by the models. Every function sums over the last (feature) dimension.

Conventions: a diagonal Gaussian is given by its mean and log-variance; a discretized
logistic by its mean and log-scale (the paper's code calls the log-scale "logvar").
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)


def log_normal_diag(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(logvar)))."""
    return -0.5 * (LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I)."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def log_normal_mixture(z: Tensor, means: Tensor, logvars: Tensor, log_weights: Tensor) -> Tensor:
    """log sum_k w_k N(z; mu_k, diag(sigma_k^2)) for z of shape (N, D) and K components (K, D).

    The K x N component densities come from two matrix products instead of an N x K x D tensor:
    sum_d (z_d - mu_kd)^2 / s_kd = (z^2) @ (1/s_k) - 2 z @ (mu_k/s_k) + sum_d mu_kd^2 / s_kd.
    This is what makes the VampPrior cheap for the importance-sampled likelihood (N = S = 5000).
    """
    precision = torch.exp(-logvars)  # (K, D)
    quadratic = (z * z) @ precision.T - 2.0 * z @ (means * precision).T  # (N, K)
    constant = (means * means * precision + logvars).sum(-1) + z.shape[-1] * LOG_2PI  # (K,)
    log_components = -0.5 * (quadratic + constant)
    return torch.logsumexp(log_components + log_weights, dim=-1)


def log_bernoulli_logits(x: Tensor, logits: Tensor) -> Tensor:
    """log Bern(x; sigmoid(l)) = sum_d x_d l_d - softplus(l_d), for any x in [0, 1].

    The sum of x_d l_d is a matrix product; when x is (N, 1, D) against logits (N, S, D), as in
    the importance-sampled likelihood, all S draws of an image share its x in one batched product.
    """
    if logits.dim() == 3 and x.dim() == 3 and x.shape[1] == 1:
        dot = torch.bmm(logits, x.transpose(1, 2)).squeeze(-1)
    else:
        dot = (x * logits).sum(-1)
    return dot - F.softplus(logits).sum(-1)


def _log_sigmoid_difference(upper: Tensor, lower: Tensor) -> Tensor:
    """log(sigmoid(upper) - sigmoid(lower)) for upper > lower, accurate in both tails."""
    # In the upper tail, use sigmoid(b) - sigmoid(a) = sigmoid(-a) - sigmoid(-b).
    flip = (upper + lower) > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = F.logsigmoid(hi)
    return log_hi + torch.log1p(-torch.exp(F.logsigmoid(lo) - log_hi).clamp(max=1.0 - 1e-7))


def log_discretized_logistic(x: Tensor, mean: Tensor, logscale: Tensor, bins: int = 256) -> Tensor:
    """log P(x) of a logistic(mean, exp(logscale)) discretized into `bins` equal bins of [0, 1].

    The paper's code (after Kingma et al.'s IAF code) takes sigmoid differences over the bin
    [k/bins, (k+1)/bins) and adds 1e-7 inside the log. Here the first and last bins also take
    the tails below 0 and above 1, so the probabilities of the bins sum to one exactly, and
    the difference is computed in log space so that far tails stay finite.
    """
    index = torch.clamp(torch.floor(x * bins), 0, bins - 1)
    inv_scale = torch.exp(-logscale)
    lower = (index / bins - mean) * inv_scale
    upper = lower + inv_scale / bins
    interior = _log_sigmoid_difference(upper, lower)
    first = F.logsigmoid(upper)  # P(X < 1/bins)
    last = F.logsigmoid(-lower)  # P(X >= (bins-1)/bins)
    log_p = torch.where(index == 0, first, torch.where(index == bins - 1, last, interior))
    return log_p.sum(-1)


def sample_discretized_logistic(mean: Tensor, logscale: Tensor, bins: int = 256) -> Tensor:
    """Draw bin indices k and return the bin centres (k + 0.5) / bins."""
    u = torch.rand_like(mean).clamp(1e-6, 1.0 - 1e-6)
    x = mean + torch.exp(logscale) * (torch.log(u) - torch.log1p(-u))
    return (torch.clamp(torch.floor(x * bins), 0, bins - 1) + 0.5) / bins
