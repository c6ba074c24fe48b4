"""Layers: gating, PixelCNN masks, clipping, initialisation."""
import math

import pytest
import torch
from torch import nn

from trainables.layers import GatedConv2d, GatedDense, GaussianHead, MaskedConv2d, he_init


def test_gated_dense_is_h_times_sigmoid_g():
    layer = GatedDense(5, 3)
    x = torch.randn(4, 5)
    w, b = layer.linear.weight, layer.linear.bias
    h, g = x @ w[:3].T + b[:3], x @ w[3:].T + b[3:]
    torch.testing.assert_close(layer(x), h * torch.sigmoid(g))


def test_gated_conv_is_h_times_sigmoid_g():
    layer = GatedConv2d(2, 3, 3, 1, 1)
    x = torch.randn(2, 2, 6, 6)
    full = layer.conv(x)
    torch.testing.assert_close(layer(x), full[:, :3] * torch.sigmoid(full[:, 3:]))


@pytest.mark.parametrize("mask", ["A", "B"])
def test_masked_convolutions_see_only_earlier_pixels(mask):
    """d out[i] / d x[j] is zero for every pixel j after i in raster order (and for j = i with 'A')."""
    torch.manual_seed(0)
    h = w = 5
    layers = [MaskedConv2d(mask, 1, 4, 3, 1, 1)] + [MaskedConv2d("B", 4, 4, 3, 1, 1) for _ in range(2)]
    net = nn.Sequential(*layers)
    for i in range(h * w):
        x = torch.randn(1, 1, h, w, requires_grad=True)
        net(x)[0, :, i // w, i % w].sum().backward()
        grad = x.grad.flatten().abs()
        first_hidden = i + 1 if mask == "B" else i
        assert torch.all(grad[first_hidden:] == 0), f"pixel {i} sees later pixels"
        if i > 0:
            assert grad[:i].sum() > 0  # and does see earlier ones


def test_gaussian_head_clips_logvar():
    head = GaussianHead(3, 2)
    with torch.no_grad():
        head.linear.weight.fill_(0)
        head.linear.bias.copy_(torch.tensor([0.5, -0.5, 10.0, -10.0]))
    mean, logvar = head(torch.zeros(1, 3))
    assert mean.tolist() == [[0.5, -0.5]] and logvar.tolist() == [[2.0, -6.0]]


def test_he_init_scales_by_fan_in():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 800), nn.Linear(800, 10))
    he_init(net)
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    assert net[1].weight.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.05)
