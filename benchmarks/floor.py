"""The arithmetic floor of a piece of work: the multiply-adds of its matrix products and
convolutions, and the time torch takes for exactly those products on this machine.

`MatmulRecorder` is a TorchDispatchMode: it sees every aten operator that a real forward and
backward pass runs (autograd's backward included, since on the CPU it runs on the calling
thread), and keeps the calls of matrix products and convolutions with the shapes, strides and
options of their arguments. `time_calls` replays each distinct call on random tensors of the
same layout and takes the median of repeats. The floor is the sum over the recorded calls;
everything else a step does (elementwise ops, autograd bookkeeping, the optimizer) is overhead
above it.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

MATMUL_OPS = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
    aten.convolution.default, aten.convolution_backward.default,
}


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorMeta":
        return cls(tuple(t.shape), tuple(t.stride()), t.dtype, str(t.device))

    def make(self) -> torch.Tensor:
        if 0 in self.stride or not _dense_strides(self.shape, self.stride):
            return torch.randn(self.shape, dtype=self.dtype, device=self.device)
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device).normal_()


def _dense_strides(shape, stride) -> bool:
    """True if (shape, stride) is a permutation of a contiguous layout (e.g. a transpose)."""
    expected = 1
    for size, st in sorted(zip(shape, stride), key=lambda p: p[1]):
        if size > 1 and st != expected:
            return False
        expected *= size
    return True


def _freeze(value):
    if isinstance(value, torch.Tensor):
        return TensorMeta.of(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    if isinstance(value, TensorMeta):
        return value.make()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Call:
    """One matrix product or convolution: the operator and the layout of its arguments."""

    func: object
    args: tuple
    kwargs: tuple
    out_numel: int

    @property
    def name(self) -> str:
        return str(self.func).split(".")[-2] if "." in str(self.func) else str(self.func)

    def macs(self) -> int:
        """Multiply-adds."""
        a = self.args
        if self.func is aten.mm.default:
            (m, k), n = a[0].shape, a[1].shape[1]
            return m * k * n
        if self.func is aten.addmm.default:
            (m, k), n = a[1].shape, a[2].shape[1]
            return m * k * n
        if self.func is aten.bmm.default:
            (b, m, k), n = a[0].shape, a[1].shape[2]
            return b * m * k * n
        if self.func is aten.baddbmm.default:
            (b, m, k), n = a[1].shape, a[2].shape[2]
            return b * m * k * n
        if self.func is aten.convolution.default:
            weight, transposed = a[1], a[6]
            per_out = math.prod(weight.shape[1:])  # (C_in / groups) * kH * kW
            if transposed:  # every input element meets (C_out / groups) * kH * kW weights
                return math.prod(a[0].shape) * per_out
            return self.out_numel * per_out
        if self.func is aten.convolution_backward.default:
            grad_out, inp, weight, transposed, mask = a[0], a[1], a[2], a[7], a[10]
            base = (math.prod(inp.shape) if transposed else math.prod(grad_out.shape)) * math.prod(weight.shape[1:])
            return base * (int(bool(mask[0])) + int(bool(mask[1])))
        raise ValueError(f"no MAC count for {self.func}")

    def prepare(self):
        """Random arguments of the recorded layout: (args, kwargs)."""
        return _thaw(self.args), {k: _thaw(v) for k, v in self.kwargs}


class MatmulRecorder(TorchDispatchMode):
    """Records the matrix products and convolutions run while it is active."""

    def __init__(self):
        super().__init__()
        self.calls: list[Call] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in MATMUL_OPS:
            first = out[0] if isinstance(out, (tuple, list)) else out
            numel = first.numel() if isinstance(first, torch.Tensor) else 0
            frozen_kwargs = tuple(sorted((k, _freeze(v)) for k, v in (kwargs or {}).items()))
            self.calls.append(Call(func, _freeze(tuple(args)), frozen_kwargs, numel))
        return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(call: Call, min_seconds: float = 0.02, min_repeats: int = 3, max_repeats: int = 200) -> float:
    """Median seconds of one call, replayed on fresh random tensors of the same layout."""
    device = next((m.device for m in _metas(call.args)), "cpu")
    args, kwargs = call.prepare()
    call.func(*args, **kwargs)  # warm-up
    _sync(device)
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) < min_seconds):
        started = time.perf_counter()
        call.func(*args, **kwargs)
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _metas(value):
    if isinstance(value, TensorMeta):
        yield value
    elif isinstance(value, tuple):
        for v in value:
            yield from _metas(v)


class FloorTimer:
    """Times each distinct call once per run and sums floors of call lists."""

    def __init__(self):
        self._seconds: dict[Call, float] = {}

    def seconds(self, calls: list[Call]) -> float:
        total = 0.0
        for call in calls:
            if call not in self._seconds:
                self._seconds[call] = time_call(call)
            total += self._seconds[call]
        return total


def macs(calls: list[Call]) -> int:
    return sum(c.macs() for c in calls)


def record(fn, *args, **kwargs) -> list[Call]:
    """The matrix products and convolutions that `fn(*args, **kwargs)` runs."""
    with MatmulRecorder() as recorder:
        fn(*args, **kwargs)
    return recorder.calls
