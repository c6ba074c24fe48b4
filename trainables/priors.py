"""Priors p(z) on the top latent layer. Every prior has the same face: `log_prob(z)` and
`sample(n)`, so a new prior is one class plus one entry in PRIORS.

Mixture priors share one log density (`log_normal_mixture`); they differ only in where their
components come from. `frozen()` computes the components once and reuses them (for
evaluation, where the K pseudo-input posteriors do not change between batches).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.distributions import log_normal_mixture, log_standard_normal
from trainables.layers import LATENT_LOGVAR_RANGE

Posterior = Callable[[Tensor], tuple[Tensor, Tensor]]


class Prior(nn.Module):
    """p(z) over `latent_dim` units."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:  # (N, D) -> (N,)
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:  # -> (n, D)
        raise NotImplementedError

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within this block the prior's parameters are taken as constants."""
        yield

    def _device(self) -> torch.device:
        return next(self.parameters(), torch.empty(0)).device


class StandardNormal(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # follows .to(device)

    def log_prob(self, z: Tensor) -> Tensor:
        return log_standard_normal(z)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self._anchor.device)


class MixturePrior(Prior):
    """p(z) = sum_k w_k N(z; mu_k, diag(sigma_k^2)); subclasses say where the components come from."""

    _cached: tuple[Tensor, Tensor, Tensor] | None = None

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        """Means (K, D), log-variances (K, D) and log-weights (K,)."""
        raise NotImplementedError

    def _components(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._cached if self._cached is not None else self.components()

    def log_prob(self, z: Tensor) -> Tensor:
        return log_normal_mixture(z, *self._components())

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        means, logvars, log_weights = self._components()
        k = torch.multinomial(log_weights.exp(), n, replacement=True)
        return means[k] + torch.exp(0.5 * logvars[k]) * torch.randn_like(means[k])

    @contextmanager
    def frozen(self) -> Iterator[None]:
        with torch.no_grad():
            self._cached = tuple(t.detach() for t in self.components())
        try:
            yield
        finally:
            self._cached = None


class MixtureOfGaussians(MixturePrior):
    """K learnable Gaussians with equal weights (the paper's "MoG" prior)."""

    def __init__(self, latent_dim: int, K: int):
        super().__init__(latent_dim)
        self.means = nn.Parameter(torch.randn(K, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(K, latent_dim))

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        K = self.means.shape[0]
        log_weights = torch.full((K,), -math.log(K), device=self.means.device)
        return self.means, F.hardtanh(self.logvars, *LATENT_LOGVAR_RANGE), log_weights


class PseudoInputs(nn.Module):
    """K pseudo-inputs u_k, clipped to [0, 1] by a hardtanh as in the paper's code.

    The paper's code forms them as hardtanh(W @ I_K) with a K x K identity; the product is the
    weight itself, so the identity is dropped here.
    """

    def __init__(self, init: Tensor, learnable: bool = True):
        super().__init__()
        if learnable:
            self.weight = nn.Parameter(init.clone())
        else:
            self.register_buffer("weight", init.clone())

    def forward(self) -> Tensor:
        return F.hardtanh(self.weight, 0.0, 1.0)


class VampPrior(MixturePrior):
    """Eq. (9): p(z) = 1/K sum_k q(z | u_k), a mixture of the encoder's posteriors at K
    pseudo-inputs. With `weighted`, eq. (16): the weights are a learnable softmax.

    `posterior` is the encoder's top-layer q(z|x) -> (mean, logvar); it is held as a plain
    callable, so the encoder's parameters belong to the model once, not to the prior too.
    """

    def __init__(self, latent_dim: int, pseudo_inputs: PseudoInputs, posterior: Posterior,
                 weighted: bool = False):
        super().__init__(latent_dim)
        self.pseudo_inputs = pseudo_inputs
        self.posterior = posterior
        K = pseudo_inputs.weight.shape[0]
        self.weight_logits = nn.Parameter(torch.zeros(K)) if weighted else None

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        means, logvars = self.posterior(self.pseudo_inputs())
        K = means.shape[0]
        if self.weight_logits is None:
            log_weights = torch.full((K,), -math.log(K), device=means.device)
        else:
            log_weights = F.log_softmax(self.weight_logits, dim=0)
        return means, logvars, log_weights


@dataclass(frozen=True)
class PriorInputs:
    """What a prior may be built from."""

    latent_dim: int
    K: int
    posterior: Posterior
    pseudo_inputs: Callable[[], Tensor]  # K initial pseudo-inputs as configured, (K, D)
    training_images: Callable[[], Tensor]  # K random training images, (K, D)


PRIORS: dict[str, Callable[[PriorInputs], Prior]] = {
    "standard": lambda a: StandardNormal(a.latent_dim),
    "mog": lambda a: MixtureOfGaussians(a.latent_dim, a.K),
    "vampprior": lambda a: VampPrior(a.latent_dim, PseudoInputs(a.pseudo_inputs()), a.posterior),
    "vampprior_data": lambda a: VampPrior(
        a.latent_dim, PseudoInputs(a.training_images(), learnable=False), a.posterior),
    "vampprior_weighted": lambda a: VampPrior(
        a.latent_dim, PseudoInputs(a.pseudo_inputs()), a.posterior, weighted=True),
}
