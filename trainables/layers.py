"""The paper's layers: gated dense and convolutional units, masked convolutions, Gaussian heads.

A gated unit computes h(x) * sigmoid(g(x)) (Dauphin et al. 2017; Tomczak & Welling 2018,
Sec. 4.1). The paper's code keeps h and g as two layers; here they are one layer with twice the
outputs, split in two: the same function and initialisation, one matrix product instead of two,
and the optimizer told that the layer's tensors are two of the paper's (`split_into`), so that
each half's gradient is normalised on its own, as there.

Speed (docs/benchmarks.md, "Where the time goes"): the gate is one operator (F.glu); the
convolution stacks run on channels-last activations (`ChannelsLast`, parameters stay
contiguous); a masked convolution skips its hidden rows in the forward pass and the input's
gradient (`_UpperRowsConv`); a one-channel convolution computes its input's gradient as products
and col2im (`_SingleChannelConv`). Each computes the same values up to float rounding, with the
same parameters, initialisation and gradients (the masked weights' hidden taps included).
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
        return F.glu(self.linear(x), dim=-1)  # [h, g] -> h * sigmoid(g), one operator


class GatedConv2d(nn.Module):
    """y = h(x) * sigmoid(g(x)) with convolutions h and g."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 2 * c_out, kernel, stride, padding)
        split_into(self.conv, 2)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        if (c.in_channels == 1 and x.requires_grad and x.device.type == "cpu" and _same_size(c)
                and not torch.is_autocast_enabled("cpu")):
            return gate_channels(_SingleChannelConv.apply(x, c.weight, c.bias))
        return gate_channels(c(x))


def _same_size(conv: nn.Conv2d) -> bool:
    """Stride 1, square odd kernel, zero 'same' padding: the output has the input's size."""
    k = conv.kernel_size[0]
    return (conv.kernel_size == (k, k) and k % 2 == 1 and conv.padding == (k // 2, k // 2)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class _SingleChannelConv(torch.autograd.Function):
    """conv2d(x, w, b, stride 1, 'same' padding) of a one-channel input, whose input gradient is
    computed as a matrix product and col2im (F.fold), a few dozen images at a time.

    oneDNN computes that gradient as a convolution with one output channel, at a small fraction
    of its usual throughput: for the VampPrior's 500 pseudo-inputs through q(z2|x)'s first 7 x 7
    layer it was the largest single operator of a convolutional step. The forward pass and the
    weight's gradient are conv2d's own. Same values up to rounding (a different summation order).
    Used on the CPU only (the slow case is oneDNN's; GPUs were not measured)."""

    CHUNK = 32  # images per product: keeps the k*k x H*W columns of a chunk to a few MB

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, weight.shape[-1] // 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        n, c_out, h, w = grad.shape
        k = weight.shape[-1]
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = grad.permute(0, 2, 3, 1).reshape(n, h * w, c_out)  # a view in channels-last memory
            w_t = weight.reshape(c_out, k * k).t()
            step = _SingleChannelConv.CHUNK
            grad_x = torch.cat([F.fold(torch.matmul(w_t, g[i:i + step].transpose(1, 2)), (h, w), k, padding=k // 2)
                                for i in range(0, n, step)])
        return (grad_x, *_parameter_grads(ctx, grad, x, weight))


def _parameter_grads(ctx, grad: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The weight's and bias's gradients of a stride-1 'same' convolution, as conv2d's backward
    gives them (the whole kernel), for the custom convolutions' backward passes; None where
    autograd does not need them."""
    needs_weight, needs_bias = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    if not (needs_weight or needs_bias):
        return None, None
    p = weight.shape[-1] // 2
    _, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [p, p], [1, 1], False, [0, 0], 1,
        [False, needs_weight, needs_bias])
    return grad_w, grad_b


def gate_channels(y: Tensor) -> Tensor:
    """h * sigmoid(g) for y = [h, g] stacked along the channels of (N, 2C, H, W), in one operator
    (F.glu). In channels-last memory each pixel's 2C channels are contiguous: gated there as the
    last dimension of the (N, H, W, 2C) view, F.glu's contiguous path, which is several times
    faster than gating along dimension 1 of that layout (forward and backward)."""
    if y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        return F.glu(y.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
    return F.glu(y, dim=1)


class ChannelsLast(nn.Module):
    """Puts an image batch (N, C, H, W) into channels-last memory (same shape and values).

    oneDNN's convolutions on the CPU run on channels-last activations without the reorders to and
    from its blocked layout that NCHW costs them, forward and backward; every operator after a
    convolution keeps the layout. A single-channel image is both layouts at once, and PyTorch then
    reads it as NCHW: it is restrided as a view, with no copy. The parameters stay contiguous.
    On other devices (not measured: no GPU was available) the input is returned as it is."""

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if x.device.type != "cpu":
            return x
        if c == 1:
            return x.reshape(n, h, w, 1).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last)


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
            if self.weight.mul(1 - self.mask).any():  # masking only when needed keeps the weight's
                self.weight.mul_(self.mask)           # version: a second call in one graph is fine
        if _same_size(self) and not torch.is_autocast_enabled(x.device.type):
            return _UpperRowsConv.apply(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class _UpperRowsConv(torch.autograd.Function):
    """conv2d(x, w, b, stride 1, 'same' padding) for a k x k weight w whose rows below the centre
    are zero (a masked convolution's): the forward pass and the input's gradient use only the
    k//2 + 1 upper rows, skipping the hidden rows' multiply-adds (a third of them for 3 x 3); the
    weight's gradient is computed for the whole kernel, hidden taps included, exactly as
    conv2d's backward gives it. Same values up to rounding (in practice identical)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        p = weight.shape[-1] // 2
        upper = weight[:, :, :p + 1].contiguous()
        ctx.save_for_backward(x, weight, upper)
        ctx.has_bias = bias is not None
        # Row i of the output sees input rows i - p .. i: pad p rows on top only.
        return F.conv2d(_pad_rows(x, p, 0), upper, bias, 1, (0, p))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, upper = ctx.saved_tensors
        p = weight.shape[-1] // 2
        grad_x = None
        if ctx.needs_input_grad[0]:
            # The same product as conv2d(x, upper, padding p), whose output has p more rows
            # at the bottom: those rows get zero gradient.
            grad_x = torch.ops.aten.convolution_backward(_pad_rows(grad, 0, p), x, upper, None, [1, 1], [p, p],
                                                         [1, 1], False, [0, 0], 1, [True, False, False])[0]
        return (grad_x, *_parameter_grads(ctx, grad, x, weight))


def _pad_rows(x: Tensor, top: int, bottom: int) -> Tensor:
    """x (N, C, H, W) with `top` and `bottom` rows of zeros, in x's memory format: F.pad without
    its pass that first fills the whole output with zeros."""
    n, c, h, w = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((n, c, h + top + bottom, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, :top].zero_()
    out[:, :, top + h:].zero_()
    out[:, :, top:top + h].copy_(x)
    return out


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
