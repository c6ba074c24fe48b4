"""Layers: gating, PixelCNN masks, clipping, initialisation."""
import math

import pytest
import torch
from torch import nn

from tests.helpers import BINARY, GRAY, images
from trainables.config import TrainConfig
from trainables.layers import GatedConv2d, GatedDense, GaussianHead, MaskedConv2d, paper_init
from trainables.models import MODELS, build_model


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


def test_paper_init_scales_linear_layers_by_fan_in_and_draws_batch_norm_scales_uniformly():
    """he_init's N(0, 2/fan_in) on every linear layer; batch-norm scales U(0, 1) as PyTorch 0.2 drew
    them (its BatchNorm default, which the paper's code relied on)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 800), nn.Linear(800, 10), nn.BatchNorm2d(4096))
    paper_init(net)
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    assert net[1].weight.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.05)
    scale = net[2].weight
    assert 0 <= scale.min() and scale.max() <= 1 and scale.mean().item() == pytest.approx(0.5, abs=0.02)
    assert scale.std().item() == pytest.approx(math.sqrt(1 / 12), rel=0.05)


def test_masked_convolution_zeroes_its_hidden_taps_but_gives_them_gradients():
    """As the paper's code: the weight itself is masked before each convolution, and the hidden
    taps' gradients are not zero (they enter the optimizer's per-tensor norm)."""
    torch.manual_seed(0)
    conv = MaskedConv2d("A", 2, 3, 3, 1, 1)
    hidden = conv.mask == 0
    conv(torch.randn(4, 2, 5, 5)).square().sum().backward()
    assert (conv.weight[hidden] == 0).all()
    assert (conv.weight.grad[hidden] != 0).any()


@pytest.mark.parametrize("spec, n_params", [(BINARY, 1), (GRAY, 2)], ids=["bernoulli", "logistic"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_fused_layer_declares_its_pieces(model, spec, n_params):
    """Each layer whose tensors stack several of the paper's tensors says how many, so that the
    optimizer normalises them one by one: inside gated units and Gaussian heads 2, the decoder's
    output layer the likelihood's parameter count, every other layer 1."""
    m = build_model(TrainConfig(model=model, prior="vampprior", K=10), spec, images(spec, 10))
    fused = {f"{name}.{child}" for name, layer in m.named_modules()
             if isinstance(layer, (GatedDense, GatedConv2d, GaussianHead)) for child, _ in layer.named_children()}
    output = [f"decoder.p_x.net.{name}" for name, layer in m.decoder.p_x.net.named_modules()
              if list(layer.parameters(recurse=False))][-1]
    for name, layer in m.named_modules():
        expected = 2 if name in fused else n_params if name == output else 1
        assert getattr(layer, "normalised_pieces", 1) == expected, name
