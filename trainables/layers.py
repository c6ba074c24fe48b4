"""The paper's layers: gated dense and convolutional units, masked convolutions, Gaussian heads.

A gated unit computes h(x) * sigmoid(g(x)) (Dauphin et al. 2017; Tomczak & Welling 2018,
Sec. 4.1). The paper's code keeps h and g as two layers; here they are one layer with twice the
outputs, split in two: the same function and initialisation, one matrix product instead of two,
and the optimizer told that the layer's tensors are two of the paper's (`split_into`), so that
each half's gradient is normalised on its own, as there.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.optim import split_into

#: Log-variances of latent Gaussians are clipped to this range (Hardtanh in the paper's code).
LATENT_LOGVAR_RANGE = (-6.0, 2.0)


class GatedDense(nn.Module):
    """y = h(x) * sigmoid(g(x)) with affine h and g."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, 2 * d_out)
        split_into(self.linear, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


class GatedConv2d(nn.Module):
    """y = h(x) * sigmoid(g(x)) with convolutions h and g."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 2 * c_out, kernel, stride, padding)
        split_into(self.conv, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.conv(x).chunk(2, dim=1)
        return h * torch.sigmoid(g)


class MaskedConv2d(nn.Conv2d):
    """PixelCNN convolution (van den Oord et al. 2016): output pixel (i, j) sees only pixels
    above it and to its left; mask 'A' also hides (i, j) itself, mask 'B' lets it through.

    As in the paper's code, the mask zeroes the weight itself before each convolution: the hidden
    taps still receive gradients, which count in the optimizer's per-tensor gradient norm."""

    def __init__(self, mask: str, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        if mask not in ("A", "B"):
            raise ValueError(f"mask must be 'A' or 'B', got {mask!r}")
        super().__init__(c_in, c_out, kernel, stride, padding, bias=bias)
        centre = kernel // 2
        keep = torch.ones(kernel, kernel)
        keep[centre, centre + (mask == "B"):] = 0
        keep[centre + 1:] = 0
        self.register_buffer("mask", keep.expand_as(self.weight).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.weight.mul_(self.mask)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class GaussianHead(nn.Module):
    """Mean (affine) and log-variance (affine, clipped to LATENT_LOGVAR_RANGE) of a diagonal
    Gaussian, from one matrix product."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, 2 * d_out)
        split_into(self.linear, 2)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.linear(h).chunk(2, dim=-1)
        return mean, F.hardtanh(logvar, *LATENT_LOGVAR_RANGE)


class Joint(nn.Module):
    """Applies one network to each input, concatenates the results (features for vectors,
    channels for images) and applies `joint` to the concatenation: the shape of the paper's
    q(z1|x,z2) and p(x|z1,z2)."""

    def __init__(self, branches: list[nn.Module], joint: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.joint = joint

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if len(inputs) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} inputs, got {len(inputs)}")
        return self.joint(torch.cat([branch(v) for branch, v in zip(self.branches, inputs)], dim=1))


def paper_init(module: nn.Module) -> None:
    """The paper's initialisation: every nn.Linear weight N(0, 2 / fan_in) (its he_init), and
    every batch-norm scale U(0, 1), the default of the PyTorch (0.2) its code ran on."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight)
