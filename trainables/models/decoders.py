"""Generative parts: p(x | latents) and, for two levels, p(z1 | z2) (eqs. 11-12).

`Observation` is p(x | z...): a network from the latents (and, when autoregressive, from x
itself, as in PixelHVAE) to the parameters of the likelihood.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from trainables.distributions import log_normal_diag
from trainables.models.encoders import _repeat, reparameterize


class Observation(nn.Module):
    """p(x | z...). `net` takes the list of latents (prefixed by x when `autoregressive`) and
    returns (N, n_params, D); an autoregressive net must see only pixels before each output."""

    def __init__(self, net: nn.Module, likelihood, dim: int, autoregressive: bool = False):
        super().__init__()
        self.net = net
        self.likelihood = likelihood
        self.dim = dim
        self.autoregressive = autoregressive

    def _out(self, x: Tensor | None, zs: list[Tensor]) -> Tensor:
        return self.net([x, *zs] if self.autoregressive else zs)

    def log_prob(self, x: Tensor, zs: list[Tensor], samples: int) -> Tensor:
        """log p(x|z) for `samples` draws per input: x is (N, D), each z (N*S, d); -> (N*S,)."""
        if self.autoregressive:
            xs = _repeat(x, samples)
            return self.likelihood.log_prob(xs, self._out(xs, zs))
        out = self._out(None, zs)
        out = out.view(x.shape[0], samples, *out.shape[1:])
        return self.likelihood.log_prob(x.unsqueeze(1), out).flatten()

    def mean(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        """E[x|z] (for an autoregressive decoder, each pixel's mean given the true pixels before it)."""
        return self.likelihood.mean(self._out(x, zs))

    def generate(self, zs: list[Tensor]) -> Tensor:
        """The mean image, or for an autoregressive decoder a sample drawn pixel by pixel."""
        if not self.autoregressive:
            return self.likelihood.mean(self._out(None, zs))
        x = torch.zeros(zs[0].shape[0], self.dim, device=zs[0].device)
        for i in range(self.dim):  # raster order; pixel i depends only on pixels < i
            x[:, i] = self.likelihood.sample(self._out(x, zs)[..., i:i + 1])[:, 0]
        return x


class OneLevelDecoder(nn.Module):
    """p(x|z)."""

    def __init__(self, p_x: Observation):
        super().__init__()
        self.p_x = p_x

    def log_prob(self, x: Tensor, zs: list[Tensor], samples: int) -> tuple[Tensor, Tensor]:
        """log p(x|z) and the log-density of the non-top latents (none here)."""
        return self.p_x.log_prob(x, zs, samples), torch.zeros((), device=x.device)

    def mean(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        return self.p_x.mean(x, zs)

    def generate(self, z: Tensor) -> Tensor:
        return self.p_x.generate([z])


class TwoLevelDecoder(nn.Module):
    """p(x, z1 | z2) = p(x | z1, z2) p(z1 | z2); `p_z1` maps z2 to (mean, logvar) of z1."""

    def __init__(self, p_z1: nn.Module, p_x: Observation):
        super().__init__()
        self.p_z1 = p_z1
        self.p_x = p_x

    def log_prob(self, x: Tensor, zs: list[Tensor], samples: int) -> tuple[Tensor, Tensor]:
        z1, z2 = zs
        return self.p_x.log_prob(x, zs, samples), log_normal_diag(z1, *self.p_z1(z2))

    def mean(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        return self.p_x.mean(x, zs)

    def generate(self, z2: Tensor) -> Tensor:
        z1 = reparameterize(*self.p_z1(z2))
        return self.p_x.generate([z1, z2])
