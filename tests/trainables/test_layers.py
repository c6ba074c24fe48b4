"""Layers: gating, PixelCNN masks, clipping, initialisation."""
import math

import pytest
import torch
from torch import nn

from tests.helpers import BINARY, GRAY, images
from trainables.config import TrainConfig
from trainables.layers import (
    ChannelsLast,
    GatedConv2d,
    GatedDense,
    GaussianHead,
    MaskedConv2d,
    _pad_rows,
    gate_channels,
    paper_init,
)
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


# ---------------------------------------------------------------- the speed-ups compute the same


def _grads(fn, *tensors, grad_out=None, seed=1):
    """fn's output and the gradients of a random linear function of it w.r.t. `tensors`."""
    for t in tensors:
        t.grad = None
    out = fn()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)) if grad_out is None else grad_out
    out.backward(g.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else g)
    return [out.detach().clone()] + [t.grad.clone() for t in tensors]


def _channels_last(x):
    return ChannelsLast()(x)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gating_in_one_operator_matches_h_times_sigmoid_g_with_gradients(layout):
    torch.manual_seed(0)
    y = torch.randn(3, 8, 5, 6)
    y = (_channels_last(y) if layout == "channels_last" else y).requires_grad_(True)
    ours = _grads(lambda: gate_channels(y), y)
    reference = _grads(lambda: y[:, :4] * torch.sigmoid(y[:, 4:]), y)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    out = gate_channels(y)
    assert out.shape == (3, 4, 5, 6)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("c", [1, 3])
def test_channels_last_keeps_the_values_and_puts_channels_innermost(c):
    x = torch.randn(2, c, 4, 5)
    y = ChannelsLast()(x)
    assert torch.equal(y, x) and y.stride()[1] == 1 and y.is_contiguous(memory_format=torch.channels_last)
    if c == 1:
        assert y.data_ptr() == x.data_ptr()  # a view, no copy


@pytest.mark.parametrize("kernel", [3, 7])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_one_channel_gated_conv_gradients_match_conv2d(kernel, layout):
    """GatedConv2d with one input channel computes its input gradient by products and col2im
    (in chunks of images); values and all gradients are conv2d's up to rounding."""
    torch.manual_seed(0)
    layer = GatedConv2d(1, 5, kernel, 1, kernel // 2)
    x = torch.rand(40, 1, 9, 8)  # more images than one chunk
    x = (_channels_last(x) if layout == "channels_last" else x).requires_grad_(True)
    params = (x, layer.conv.weight, layer.conv.bias)
    ours = _grads(lambda: layer(x), *params)

    def reference():
        h, g = nn.functional.conv2d(x, layer.conv.weight, layer.conv.bias, 1, kernel // 2).chunk(2, 1)
        return h * torch.sigmoid(g)
    torch.testing.assert_close(ours, _grads(reference, *params), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask, c_in, bias", [("A", 3, False), ("B", 6, False), ("B", 4, True)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_masked_convolution_on_its_upper_rows_matches_the_full_kernel(mask, c_in, bias, layout):
    """The forward pass and the input's gradient skip the hidden rows; the output and every
    gradient (the hidden taps' included) are those of conv2d with the masked 3x3 weight."""
    torch.manual_seed(0)
    conv = MaskedConv2d(mask, c_in, 5, 3, 1, 1, bias=bias)
    x = torch.randn(4, c_in, 7, 6)
    x = (_channels_last(x) if layout == "channels_last" else x).requires_grad_(True)
    params = (x, conv.weight) + ((conv.bias,) if bias else ())
    ours = _grads(lambda: conv(x), *params)
    reference = _grads(lambda: nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1), *params)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (ours[2][conv.mask == 0] != 0).any()  # hidden taps keep their gradients


@pytest.mark.parametrize("top, bottom", [(1, 0), (0, 1), (2, 3)])
def test_pad_rows_is_f_pad_in_the_same_layout(top, bottom):
    for x in (torch.randn(2, 3, 4, 5), _channels_last(torch.randn(2, 3, 4, 5))):
        y = _pad_rows(x, top, bottom)
        assert torch.equal(y, nn.functional.pad(x, (0, 0, top, bottom)))
        assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)


def test_a_masked_convolution_runs_twice_in_one_graph():
    """Masking the weight in place must not break a graph that uses the layer twice (e.g. two
    losses summed before one backward)."""
    torch.manual_seed(0)
    conv = MaskedConv2d("B", 2, 3, 3, 1, 1)
    x = torch.randn(2, 2, 5, 5)
    (conv(x).sum() + conv(x).square().sum()).backward()
    assert conv.weight.grad is not None
