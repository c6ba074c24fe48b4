"""Evaluation (Sec. 4.2 of the paper): the importance-sampled log-likelihood, the ELBO,
active units and bits per dimension.

log p(x) ~= logsumexp_s [log p(x, z_s) - log q(z_s|x)] - log S,  z_s ~ q(z|x)  (Burda et al. 2016)

Each evaluation runs under `prior.frozen()`: the K pseudo-input posteriors of a VampPrior are
computed once, not once per batch. Inputs and draws are batched together (`rows` draws per
pass); parts of the encoder that depend on x alone run once per input.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from trainables.models import Model

ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def log_likelihood(model: Model, x: Tensor, samples: int = 5000, rows: int = 2500) -> Tensor:
    """Per-example importance-sampled estimate of log p(x) in nats, shape (N,)."""
    model.eval()
    per_pass = min(samples, rows)  # draws per input in one pass
    inputs = max(1, rows // per_pass)  # inputs in one pass
    out = []
    with model.prior.frozen():
        for start in range(0, x.shape[0], inputs):
            chunk = x[start:start + inputs]
            weights = [model.terms(chunk, min(per_pass, samples - s)).log_weight
                       for s in range(0, samples, per_pass)]
            out.append(torch.logsumexp(torch.cat(weights, dim=1), dim=1) - math.log(samples))
    return torch.cat(out)


@torch.no_grad()
def elbo(model: Model, x: Tensor, batch: int = 1000) -> Tensor:
    """Per-example ELBO (one posterior draw each), shape (N,)."""
    model.eval()
    with model.prior.frozen():
        return torch.cat([model.terms(x[s:s + batch]).log_weight[:, 0] for s in range(0, x.shape[0], batch)])


@torch.no_grad()
def active_units(model: Model, x: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD,
                 batch: int = 1000) -> list[int]:
    """Units u with Var_x(E_q[z_u | x]) > threshold, counted per latent layer, bottom first
    (Burda et al. 2016)."""
    model.eval()
    chunks = [model.latent_means(x[s:s + batch]) for s in range(0, x.shape[0], batch)]
    layers = [torch.cat(layer) for layer in zip(*chunks)]
    return [int((m.var(dim=0, unbiased=False) > threshold).sum()) for m in layers]


def bits_per_dim(log_likelihood_nats: float, dim: int) -> float:
    """-log2 p(x) / D."""
    return -log_likelihood_nats / (dim * math.log(2.0))


def evaluate(model: Model, x: Tensor, *, samples: int, seed: int) -> dict:
    """The test figures of one model: each estimate seeded on its own, so that re-scoring the
    same weights on the same data with the same seed gives the same numbers. Bits per dimension
    too where the model's likelihood reports them (gray data)."""
    torch.manual_seed(seed)
    ll = log_likelihood(model, x, samples)
    torch.manual_seed(seed)
    bound = elbo(model, x)
    result = {
        "test_ll": float(ll.mean()),
        "test_elbo": float(bound.mean()),
        "active_units": active_units(model, x),
        "samples": samples,
        "test_size": int(x.shape[0]),
        "per_example_ll": ll.cpu(),
    }
    if model.likelihood.reports_bits_per_dim:
        result["bits_per_dim"] = bits_per_dim(result["test_ll"], x.shape[1])
        result["elbo_bits_per_dim"] = bits_per_dim(result["test_elbo"], x.shape[1])
    return result
