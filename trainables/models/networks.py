"""The paper's four architectures (Sec. 4.1 and its code), as encoder/decoder pairs.

Notation: D = C*H*W pixels, H0 hidden units (300), z1/z2 latent sizes (40), P the number of
likelihood parameters per pixel (1 Bernoulli, 2 discretized logistic).

- vae:       q(z|x): 2 gated dense -> Gaussian;  p(x|z): 2 gated dense -> output.
- hvae:      q(z2|x): 2 gated dense; q(z1|x,z2): gated dense on each, gated dense on both;
             p(z1|z2): 2 gated dense; p(x|z1,z2): gated dense on each, gated dense on both.
- convhvae:  encoders of gated convolutions; p(x|z1,z2): z1, z2 each to H0 units by a gated
             dense layer, both together (2 H0 -> D, gated dense) to one image, then 4 gated 3x3
             convolutions of 64 channels and a 1x1 convolution to the likelihood's parameters.
- pixelhvae: the convhvae encoders; p(x|z1,z2) a PixelCNN over [x, image(z1), image(z2)]:
             one masked 'A' and seven masked 'B' 3x3 convolutions of 64 channels with
             batch normalisation and ReLU; for gray data its 1x1 output convolutions have no
             bias (as in the original).

The convolution stacks take their images in channels-last memory (`_image`, layers.ChannelsLast):
the same values and parameters, a faster layout for oneDNN's convolutions on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from trainables.layers import ChannelsLast, GatedConv2d, GatedDense, GaussianHead, Joint, MaskedConv2d
from trainables.models.decoders import Observation, OneLevelDecoder, TwoLevelDecoder
from trainables.models.encoders import OneLevelEncoder, TwoLevelEncoder
from trainables.optim import split_into

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Sizes:
    hidden: int = 300
    z1: int = 40
    z2: int = 40


@dataclass
class Parts:
    encoder: nn.Module
    decoder: nn.Module
    top_dim: int  # size of the latent layer that carries the prior


def _dense_out(d_in: int, n_params: int, dim: int) -> nn.Module:
    """An affine map to `n_params` values per pixel (the original's one layer per parameter)."""
    out = nn.Linear(d_in, n_params * dim)
    split_into(out, n_params)
    return nn.Sequential(out, nn.Unflatten(1, (n_params, dim)))


def _conv_out(c_in: int, n_params: int, shape: Shape, bias: bool = True) -> nn.Module:
    """A 1x1 convolution to `n_params` values per pixel (the original's one 1x1 convolution per
    parameter, as one with their channels stacked)."""
    dim = shape[0] * shape[1] * shape[2]
    out = nn.Conv2d(c_in, n_params * shape[0], 1, bias=bias)
    split_into(out, n_params)
    return nn.Sequential(out, nn.Flatten(),
                         nn.Unflatten(1, (n_params, dim)))


def _image(shape: Shape) -> nn.Module:
    """A flat (N, D) batch as images (N, C, H, W) in channels-last memory, the layout every
    convolution stack here runs in (layers.ChannelsLast)."""
    return nn.Sequential(nn.Unflatten(1, shape), ChannelsLast())


def _to_image(d_in: int, shape: Shape) -> nn.Module:
    """A latent vector to a D-pixel image by one gated dense layer."""
    return nn.Sequential(GatedDense(d_in, shape[0] * shape[1] * shape[2]), _image(shape))


def _p_z1(s: Sizes) -> nn.Module:
    return nn.Sequential(GatedDense(s.z2, s.hidden), GatedDense(s.hidden, s.hidden),
                         GaussianHead(s.hidden, s.z1))


def _flat_size(body: nn.Module, shape: Shape) -> int:
    with torch.no_grad():
        return body(torch.zeros(1, shape[0] * shape[1] * shape[2])).shape[1]


def _conv_body(shape: Shape, first_kernel: int, third_kernel: int) -> nn.Module:
    """Gated convolutions of 32, 32 (stride 2), 64, 64 (stride 2) and 6 channels: the trunk of
    the paper's convolutional encoders (q(z2|x) uses kernels 7 and 5 where q(z1|x,z2) uses 3)."""
    k1, k3 = first_kernel, third_kernel
    return nn.Sequential(
        _image(shape),
        GatedConv2d(shape[0], 32, k1, 1, k1 // 2), GatedConv2d(32, 32, 3, 2, 1),
        GatedConv2d(32, 64, k3, 1, k3 // 2), GatedConv2d(64, 64, 3, 2, 1),
        GatedConv2d(64, 6, 3, 1, 1), nn.Flatten(),
    )


def _conv_encoder(shape: Shape, s: Sizes) -> TwoLevelEncoder:
    q_z2_body = _conv_body(shape, first_kernel=7, third_kernel=5)
    q_z1_body = _conv_body(shape, first_kernel=3, third_kernel=3)
    h2, h1 = _flat_size(q_z2_body, shape), _flat_size(q_z1_body, shape)
    return TwoLevelEncoder(
        q_z2=nn.Sequential(q_z2_body, GaussianHead(h2, s.z2)),
        q_z1_x=q_z1_body,
        q_z1_z2=GatedDense(s.z2, h1),
        q_z1_joint=nn.Sequential(GatedDense(2 * h1, s.hidden), GaussianHead(s.hidden, s.z1)),
    )


def vae(shape: Shape, likelihood, s: Sizes) -> Parts:
    d = shape[0] * shape[1] * shape[2]
    encoder = OneLevelEncoder(nn.Sequential(
        GatedDense(d, s.hidden), GatedDense(s.hidden, s.hidden), GaussianHead(s.hidden, s.z1)))
    p_x = Joint([GatedDense(s.z1, s.hidden)],
                nn.Sequential(GatedDense(s.hidden, s.hidden), _dense_out(s.hidden, likelihood.n_params, d)))
    return Parts(encoder, OneLevelDecoder(Observation(p_x, likelihood, d)), s.z1)


def hvae(shape: Shape, likelihood, s: Sizes) -> Parts:
    d = shape[0] * shape[1] * shape[2]
    encoder = TwoLevelEncoder(
        q_z2=nn.Sequential(GatedDense(d, s.hidden), GatedDense(s.hidden, s.hidden),
                           GaussianHead(s.hidden, s.z2)),
        q_z1_x=GatedDense(d, s.hidden),
        q_z1_z2=GatedDense(s.z2, s.hidden),
        q_z1_joint=nn.Sequential(GatedDense(2 * s.hidden, s.hidden), GaussianHead(s.hidden, s.z1)),
    )
    p_x = Joint([GatedDense(s.z1, s.hidden), GatedDense(s.z2, s.hidden)],
                nn.Sequential(GatedDense(2 * s.hidden, s.hidden),
                              _dense_out(s.hidden, likelihood.n_params, d)))
    return Parts(encoder, TwoLevelDecoder(_p_z1(s), Observation(p_x, likelihood, d)), s.z2)


def convhvae(shape: Shape, likelihood, s: Sizes) -> Parts:
    d = shape[0] * shape[1] * shape[2]
    p_x = Joint([GatedDense(s.z1, s.hidden), GatedDense(s.z2, s.hidden)], nn.Sequential(
        _to_image(2 * s.hidden, shape),
        GatedConv2d(shape[0], 64, 3, 1, 1), GatedConv2d(64, 64, 3, 1, 1),
        GatedConv2d(64, 64, 3, 1, 1), GatedConv2d(64, 64, 3, 1, 1),
        _conv_out(64, likelihood.n_params, shape)))
    decoder = TwoLevelDecoder(_p_z1(s), Observation(p_x, likelihood, d))
    return Parts(_conv_encoder(shape, s), decoder, s.z2)


def pixelhvae(shape: Shape, likelihood, s: Sizes) -> Parts:
    d = shape[0] * shape[1] * shape[2]
    layers: list[nn.Module] = [MaskedConv2d("A", 3 * shape[0], 64, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    for _ in range(7):  # ReLU in place on the batch norm's output, as the original's ReLU(True)
        layers += [MaskedConv2d("B", 64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    p_x = Joint([_image(shape), _to_image(s.z1, shape), _to_image(s.z2, shape)],
                nn.Sequential(*layers, _conv_out(64, likelihood.n_params, shape,
                                                 bias=likelihood.n_params == 1)))
    decoder = TwoLevelDecoder(_p_z1(s), Observation(p_x, likelihood, d, autoregressive=True))
    return Parts(_conv_encoder(shape, s), decoder, s.z2)


MODELS: dict[str, Callable[[Shape, object, Sizes], Parts]] = {
    "vae": vae,
    "hvae": hvae,
    "convhvae": convhvae,
    "pixelhvae": pixelhvae,
}
