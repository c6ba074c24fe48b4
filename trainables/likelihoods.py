"""Observation models p(x | decoder output), keyed by the name a dataset asks for.

A decoder ends in `n_params` values per pixel (shape (N, n_params, D)); the likelihood turns
them into constrained parameters, log-probabilities, means and samples.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from trainables.distributions import (
    log_bernoulli_logits,
    log_discretized_logistic,
    sample_discretized_logistic,
)

#: Log-scale range of the discretized logistic (Hardtanh(-4.5, 0) in the paper's code).
LOGSCALE_RANGE = (-4.5, 0.0)
#: Range of the discretized logistic's mean: the paper's code clamps sigmoid(a) to the centres
#: of the first and last of 256 bins.
MEAN_RANGE = (1.0 / 512.0, 1.0 - 1.0 / 512.0)
#: The paper's code clamps a Bernoulli's probability to [1e-5, 1 - 1e-5] before its log: the same
#: as clamping the logit to +-logit(1 - 1e-5). A pixel then costs at most 11.51 nats, and an
#: output beyond the clamp gets no gradient, as there.
LOGIT_BOUND = math.log((1.0 - 1e-5) / 1e-5)


class Bernoulli:
    """Binary images: p(x|z) = prod_d Bern(x_d; sigmoid(l_d)), with l_d clamped to
    +-LOGIT_BOUND in the log-likelihood."""

    n_params = 1
    reports_bits_per_dim = False  # the test figures of binary data are in nats only

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        return log_bernoulli_logits(x, out[..., 0, :].clamp(-LOGIT_BOUND, LOGIT_BOUND))

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out[..., 0, :])

    def sample(self, out: Tensor) -> Tensor:
        return torch.bernoulli(self.mean(out))


class DiscretizedLogistic:
    """Gray images in 256 levels: a logistic with mean clip(sigmoid(a), 1/512, 1 - 1/512) and
    log-scale clip(b, -4.5, 0), discretized into 256 bins (Sec. 4.1 of the paper)."""

    n_params = 2
    bins = 256
    reports_bits_per_dim = True  # gray data: the test figures add bits per dimension

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.clamp(torch.sigmoid(out[..., 0, :]), *MEAN_RANGE)
        return mean, F.hardtanh(out[..., 1, :], *LOGSCALE_RANGE)

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        return log_discretized_logistic(x, *self._split(out), bins=self.bins)

    def mean(self, out: Tensor) -> Tensor:
        return self._split(out)[0]

    def sample(self, out: Tensor) -> Tensor:
        return sample_discretized_logistic(*self._split(out), bins=self.bins)


LIKELIHOODS = {"bernoulli": Bernoulli(), "logistic": DiscretizedLogistic()}
