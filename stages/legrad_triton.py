"""LeGrad's clamped relevance as one fused Triton kernel (issue 33): the [K x H, N, N]
attention gradients are made, clamped and reduced tile by tile on chip, never written.

Same interface and same mathematics as :class:`stages.legrad.PositiveGradRelevance`
(cotangent dO [B, K, N, C], values V [B, H, N, dh], C = H * dh):

    forward   r[b,k,j]    = 1/(H N) sum_{h,i} relu(<dO[b,k,i,head h], V[b,h,j]>)
    backward  dO[b,k,i,h] = 1/(H N) sum_j g[b,k,j] 1[<dO[b,k,i,h], V[b,h,j]> > 0] V[b,h,j]

and, like the torch path, no gradient for V (its autograd returns None there: the values are
forward quantities of the frozen network). The sign in backward is recomputed per tile
(FlashAttention's trick), so memory traffic is the inputs read once per tile row plus the
[B, K, N] output: at ViT-L/14-336 (16 heads, 577 tokens) and 101 masks, about 0.24 GB per
pass in fp32 instead of the 17 GB the materialised attention gradients cost.

Precision: fp32 or bf16 (fp16) inputs; the products accumulate in fp32 and so does the
reduction. An fp32 product uses TF32 where torch's CUDA matmuls are allowed to
(``torch.backends.cuda.matmul.allow_tf32``, which ``invert.precision = "tf32"`` sets), IEEE
fp32 otherwise. The gradient comes back in the cotangent's dtype, as the torch path's does.

Any N (masked loads: 577, 257, 197 are not multiples of a tile), any head size up to 256
(padded to a power of two >= 16 for ``tl.dot``), any head count, B >= 1. Determinism: each
output element is reduced by one program in a fixed order (no atomics).

This module imports triton: import it lazily (``stages.legrad.relevance_function``). Under
``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors, which
is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

#: Tile sizes: a [BLOCK_I, BLOCK_J] block of attention gradients per step of a program.
#: 64 x 64 keeps an fp32 tile (16 KB) and the head's [64, 64] operands in registers on an
#: H100 with 4 warps; not tuned on a GPU (none was lent when this was written).
BLOCK_I = 64
BLOCK_J = 64
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _relevance_forward(
    cot_ptr, val_ptr, out_ptr,
    K, N, H, DH, scale,
    s_cb, s_ck, s_cn, s_cc,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_ok, s_on,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program: mask (b, k), key columns j of one tile; loops over heads and query rows.
    The programs of one mask are adjacent in launch order, so its dO is read from L2."""
    pid = tl.program_id(0)
    tiles_j = tl.cdiv(N, BLOCK_J)
    jb = pid % tiles_j
    bk = pid // tiles_j
    b = bk // K
    k = bk % K
    offs_j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_i = tl.arange(0, BLOCK_I)
    offs_d = tl.arange(0, BLOCK_D)
    mask_j = offs_j < N
    mask_d = offs_d < DH
    acc = tl.zeros([BLOCK_J], dtype=tl.float32)
    for h in range(0, H):
        v_ptrs = val_ptr + b * s_vb + h * s_vh + offs_j[:, None] * s_vn + offs_d[None, :] * s_vd
        v = tl.load(v_ptrs, mask=mask_j[:, None] & mask_d[None, :], other=0.0)  # [J, D]
        if UPCAST:
            v = v.to(tl.float32)
        for i0 in range(0, N, BLOCK_I):
            rows = i0 + offs_i
            c_ptrs = (cot_ptr + b * s_cb + k * s_ck + rows[:, None] * s_cn
                      + (h * DH + offs_d[None, :]) * s_cc)
            c = tl.load(c_ptrs, mask=(rows[:, None] < N) & mask_d[None, :], other=0.0)  # [I, D]
            if UPCAST:
                c = c.to(tl.float32)
            scores = tl.dot(c, tl.trans(v), input_precision=PRECISION)  # [I, J], fp32
            acc += tl.sum(tl.maximum(scores, 0.0), axis=0)  # padded rows give 0
    tl.store(out_ptr + b * s_ob + k * s_ok + offs_j * s_on, acc * scale, mask=mask_j)


@triton.jit
def _relevance_backward(
    cot_ptr, val_ptr, grad_ptr, dcot_ptr,
    K, N, H, DH, scale,
    s_cb, s_ck, s_cn, s_cc,
    s_vb, s_vh, s_vn, s_vd,
    s_gb, s_gk, s_gn,
    s_db, s_dk, s_dn, s_dc,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program: mask (b, k), head h, query rows i of one tile; loops over key columns,
    recomputing each tile's sign from dO and V."""
    pid = tl.program_id(0)
    tiles_i = tl.cdiv(N, BLOCK_I)
    ib = pid % tiles_i
    rest = pid // tiles_i
    h = rest % H
    bk = rest // H
    b = bk // K
    k = bk % K
    rows = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_c = (rows[:, None] < N) & (offs_d[None, :] < DH)
    c_ptrs = cot_ptr + b * s_cb + k * s_ck + rows[:, None] * s_cn + (h * DH + offs_d[None, :]) * s_cc
    c = tl.load(c_ptrs, mask=mask_c, other=0.0)  # [I, D]
    if UPCAST:
        c = c.to(tl.float32)
    acc = tl.zeros([BLOCK_I, BLOCK_D], dtype=tl.float32)
    for j0 in range(0, N, BLOCK_J):
        cols = j0 + offs_j
        mask_j = cols < N
        v_ptrs = val_ptr + b * s_vb + h * s_vh + cols[:, None] * s_vn + offs_d[None, :] * s_vd
        v = tl.load(v_ptrs, mask=mask_j[:, None] & (offs_d[None, :] < DH), other=0.0)  # [J, D]
        w_type = v.dtype  # the weights are rounded to the inputs' dtype, as the torch path's
        if UPCAST:
            v = v.to(tl.float32)
        g = tl.load(grad_ptr + b * s_gb + k * s_gk + cols * s_gn, mask=mask_j, other=0.0)  # [J]
        scores = tl.dot(c, tl.trans(v), input_precision=PRECISION)  # [I, J]
        # ReLU's derivative: the output's gradient where the score was positive, 0 at 0
        weights = tl.where(scores > 0.0, g.to(tl.float32)[None, :] * scale, 0.0)
        acc += tl.dot(weights.to(w_type).to(v.dtype), v, input_precision=PRECISION)  # [I, D]
    d_ptrs = dcot_ptr + b * s_db + k * s_dk + rows[:, None] * s_dn + (h * DH + offs_d[None, :]) * s_dc
    tl.store(d_ptrs, acc.to(dcot_ptr.dtype.element_ty), mask=mask_c)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _precision(dtype: torch.dtype) -> str:
    if _interpreted() or (dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"  # ignored for bf16/fp16 operands


def _upcast(dtype: torch.dtype) -> bool:
    """Whether the kernels widen 16-bit tiles to fp32 before ``tl.dot``: only under the
    interpreter, whose ``tl.dot`` on bf16 returns garbage (triton 3.8, checked here). The
    products of two bf16 numbers are exact in fp32, so the widened product accumulated in
    fp32 is the tensor cores' bf16 product with fp32 accumulation, up to summation order."""
    return _interpreted() and dtype != torch.float32


def _check(cotangent: Tensor, values: Tensor) -> tuple[int, int, int, int, int]:
    if cotangent.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the fused relevance takes {SUPPORTED_DTYPES}, not {cotangent.dtype}")
    B, K, N, C = cotangent.shape
    Bv, H, Nv, dh = values.shape
    if (Bv, Nv, H * dh) != (B, N, C):
        raise ValueError(f"cotangent {tuple(cotangent.shape)} does not match values {tuple(values.shape)}")
    if dh > 256:
        raise ValueError(f"head size {dh} is over the fused kernel's 256")
    return B, K, N, H, dh


def _block_d(dh: int) -> int:
    return max(16, triton.next_power_of_2(dh))


def relevance_forward(cotangent: Tensor, values: Tensor) -> Tensor:
    """r [B, K, N] in fp32 (no autograd); ``values`` already in the cotangent's dtype."""
    B, K, N, H, dh = _check(cotangent, values)
    out = torch.empty(B, K, N, device=cotangent.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    grid = (B * K * triton.cdiv(N, BLOCK_J),)
    _relevance_forward[grid](
        cotangent, values, out, K, N, H, dh, 1.0 / (H * N),
        *cotangent.stride(), *values.stride(), *out.stride(),
        BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, BLOCK_D=_block_d(dh), PRECISION=_precision(cotangent.dtype),
        UPCAST=_upcast(cotangent.dtype),
    )
    return out


def relevance_backward(cotangent: Tensor, values: Tensor, grad: Tensor) -> Tensor:
    """d r / d cotangent applied to ``grad`` [B, K, N]; in the cotangent's dtype."""
    B, K, N, H, dh = _check(cotangent, values)
    d_cotangent = torch.empty_like(cotangent, memory_format=torch.contiguous_format)
    if d_cotangent.numel() == 0:
        return d_cotangent
    grad = grad.to(torch.float32)
    grid = (B * K * H * triton.cdiv(N, BLOCK_I),)
    _relevance_backward[grid](
        cotangent, values, grad, d_cotangent, K, N, H, dh, 1.0 / (H * N),
        *cotangent.stride(), *values.stride(), *grad.stride(), *d_cotangent.stride(),
        BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, BLOCK_D=_block_d(dh), PRECISION=_precision(cotangent.dtype),
        UPCAST=_upcast(cotangent.dtype),
    )
    return d_cotangent


class FusedPositiveGradRelevance(torch.autograd.Function):
    """:class:`stages.legrad.PositiveGradRelevance` with the fused kernels: the same
    ``apply(cotangent, values)``, the same output (fp32 [B, K, N]) and gradients (the
    cotangent's in its dtype, None for the values)."""

    @staticmethod
    def forward(ctx, cotangent: Tensor, values: Tensor) -> Tensor:  # type: ignore[override]
        values = values.to(cotangent.dtype)  # bf16 under autocast: one dtype in both passes
        ctx.save_for_backward(cotangent, values)
        return relevance_forward(cotangent, values)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        cotangent, values = ctx.saved_tensors
        return relevance_backward(cotangent, values, grad), None
