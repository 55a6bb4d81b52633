"""TF32 emulated on any device, for measurement only (issue 21: how far TF32 moves each
stage from fp32, before a GPU is lent).

A TF32 tensor-core matmul or convolution reads its float32 inputs rounded to TF32 (the 8-bit
exponent of float32, 10 explicit mantissa bits instead of 23, round to nearest, ties to
even) and accumulates in float32. :func:`round_to_tf32` is that rounding, on the bits;
:class:`EmulatedTF32` is a torch function mode that applies it to the float32 tensor
arguments (inputs and weights) of the matmuls and convolutions called inside it, which
then run in float32 as usual. The accumulation order is the CPU kernel's, not the tensor
cores': the figure is the effect of the rounded inputs, which dominates.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: Low mantissa bits float32 has and TF32 drops.
DROPPED_BITS = 23 - 10


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to the nearest TF32 value, ties to even, as float32; other
    dtypes, infinities and NaNs are returned unchanged."""
    if x.dtype != torch.float32:
        return x
    with torch.no_grad():
        bits = x.detach().contiguous().view(torch.int32)
        keep_lsb = (bits >> DROPPED_BITS) & 1  # the last kept bit: a tie goes to the even side
        half = (1 << (DROPPED_BITS - 1)) - 1
        rounded = ((bits + half + keep_lsb) & ~((1 << DROPPED_BITS) - 1)).view(torch.float32)
        rounded = torch.where(torch.isfinite(x), rounded, x).view(x.shape)
    # the value rounded, the gradient straight through (x + (r - x) is r exactly: r - x is exact)
    return x + (rounded - x).detach() if x.requires_grad else rounded


#: The ops whose float32 tensor arguments TF32 tensor cores would read rounded.
TF32_OPS = {
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.addbmm, torch.einsum,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.mm, torch.Tensor.bmm,
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.scaled_dot_product_attention,
}


def _rounded(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return round_to_tf32(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_rounded(v) for v in value)
    return value


class EmulatedTF32(TorchFunctionMode):
    """Inside ``with EmulatedTF32():``, every op of ``TF32_OPS`` reads its float32 tensor
    arguments rounded to TF32; gradients pass the rounding as through identity (what a
    TF32 backward does to them is not emulated)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in TF32_OPS:
            args, kwargs = _rounded(args), {k: _rounded(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)
