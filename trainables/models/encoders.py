"""Variational posteriors q(z|x), one level (eq. 3) and two levels (eqs. 13-14).

Each encoder offers `top(x)` (the mean and log-variance of the top layer, which the VampPrior
evaluates at its pseudo-inputs), `forward(x, samples)` (draws and log q) and `means(x)`.
Parts that depend on x alone are computed once per input, not once per draw.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from trainables.distributions import log_normal_diag
from trainables.models.model import Posterior


def reparameterize(mean: Tensor, logvar: Tensor) -> Tensor:
    """z = mean + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014)."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def _repeat(t: Tensor, samples: int) -> Tensor:
    return t if samples == 1 else t.repeat_interleave(samples, dim=0)


class OneLevelEncoder(nn.Module):
    """q(z|x) = N(z; mu(x), diag sigma^2(x)); `q_z` maps x to (mu, log sigma^2)."""

    def __init__(self, q_z: nn.Module):
        super().__init__()
        self.q_z = q_z

    def top(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_z(x)

    def forward(self, x: Tensor, samples: int = 1) -> Posterior:
        mean, logvar = (_repeat(t, samples) for t in self.q_z(x))
        z = reparameterize(mean, logvar)
        return Posterior([z], log_normal_diag(z, mean, logvar))

    def means(self, x: Tensor) -> list[Tensor]:
        return [self.q_z(x)[0]]


class TwoLevelEncoder(nn.Module):
    """q(z1, z2 | x) = q(z2|x) q(z1|x, z2).

    q_z2: x -> (mean, logvar) of z2;  q_z1_x: x -> features;  q_z1_z2: z2 -> features;
    q_z1_joint: concatenated features -> (mean, logvar) of z1.
    """

    def __init__(self, q_z2: nn.Module, q_z1_x: nn.Module, q_z1_z2: nn.Module, q_z1_joint: nn.Module):
        super().__init__()
        self.q_z2 = q_z2
        self.q_z1_x = q_z1_x
        self.q_z1_z2 = q_z1_z2
        self.q_z1_joint = q_z1_joint

    def top(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_z2(x)

    def _q_z1(self, h_x: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_z1_joint(torch.cat([h_x, self.q_z1_z2(z2)], dim=1))

    def forward(self, x: Tensor, samples: int = 1) -> Posterior:
        mean2, logvar2 = (_repeat(t, samples) for t in self.q_z2(x))
        h_x = _repeat(self.q_z1_x(x), samples)
        z2 = reparameterize(mean2, logvar2)
        mean1, logvar1 = self._q_z1(h_x, z2)
        z1 = reparameterize(mean1, logvar1)
        log_q = log_normal_diag(z1, mean1, logvar1) + log_normal_diag(z2, mean2, logvar2)
        return Posterior([z1, z2], log_q)

    def means(self, x: Tensor) -> list[Tensor]:
        """E[z2|x], and E[z1|x] approximated at z2 = E[z2|x]."""
        mean2, _ = self.q_z2(x)
        mean1, _ = self._q_z1(self.q_z1_x(x), mean2)
        return [mean1, mean2]
