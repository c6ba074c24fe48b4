"""Model(encoder, decoder, prior): a VAE assembled from its three parts.

Shapes: images enter flat, (N, D). With `samples=S` every input is paired with S draws from
the posterior; the draws of one input are consecutive rows, (N*S, ...), and per-sample results
come back as (N, S).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainables.priors import Prior


@dataclass
class Posterior:
    """Draws z ~ q(z|x), bottom layer first, top layer last, and log q(z|x) of each draw."""

    z: list[Tensor]
    log_q: Tensor


@dataclass
class Terms:
    """Per-draw parts of the ELBO, each (N, S): log p(x|z) and log q(z|x) - log p(z)."""

    log_px: Tensor
    kl: Tensor

    @property
    def log_weight(self) -> Tensor:
        """log p(x, z) - log q(z|x): the importance weight of each draw."""
        return self.log_px - self.kl


class Model(nn.Module):
    """A VAE: encoder q(z|x), decoder p(x|z) (with p(z1|z2) for two levels), prior p(z_top)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: Prior):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior

    @property
    def likelihood(self):
        """The observation model p(x|z...) ends in (trainables.likelihoods): what the images are."""
        return self.decoder.p_x.likelihood

    @property
    def autoregressive(self) -> bool:
        """Whether p(x|z...) also conditions on x (PixelHVAE): `generate` then samples pixel by
        pixel, one pass of the decoder per pixel."""
        return self.decoder.p_x.autoregressive

    def terms(self, x: Tensor, samples: int = 1) -> Terms:
        """Eq. (2): the reconstruction and KL parts of the ELBO, for `samples` draws per input."""
        n = x.shape[0]
        posterior: Posterior = self.encoder(x, samples)
        log_px, log_p_lower = self.decoder.log_prob(x, posterior.z, samples)
        kl = posterior.log_q - log_p_lower - self.prior.log_prob(posterior.z[-1])
        return Terms(log_px.view(n, samples), kl.view(n, samples))

    def loss(self, x: Tensor, beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """Mean of -(log p(x|z) - beta * KL) over the batch, with its two parts (the
        reconstruction error -log p(x|z) and the KL)."""
        t = self.terms(x)
        re, kl = -t.log_px.mean(), t.kl.mean()
        return re + beta * kl, re, kl

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """n images from p(x) = sum_z p(x|z) p(z): means for non-autoregressive decoders."""
        return self.decoder.generate(self.prior.sample(n))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at one posterior draw per image."""
        return self.decoder.mean(x, self.encoder(x, 1).z)

    @torch.no_grad()
    def latent_means(self, x: Tensor) -> list[Tensor]:
        """E_q[z] of each latent layer, bottom first (for active units)."""
        return self.encoder.means(x)
