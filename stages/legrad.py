"""LeGrad explainability maps for many query tokens at once, from one forward of the image.

Semantics follow the reference package ``legrad-torch`` 1.1 (``LeWrapper.compute_legrad_clip``,
layers ``l >= start`` with ``start = layer_index`` or ``depth + layer_index`` if negative):

    f_l   = normalize(ln_post(mean over ALL tokens, CLS included, of block l's output) @ proj)
    s     = t . f_l                         (t: a unit query token, D-dim)
    G_l   = relu(d s / d A_l)               (A_l: block l's softmax attention, [H, N, N])
    r_l   = mean over heads and over query rows i of G_l, key columns 1.. (CLS dropped)
    map   = min_max(sum_l upsample_bilinear(r_l on the patch grid, x patch_size))

The reference gets d s / d A_l by autograd on an image batch repeated once per query and
then differentiates that gradient again (``create_graph=True``) to optimise t. Here the
gradient is written out instead. A_l only acts through O = A V, so

    d s / d A_l[h, i, j] = < dO_l[i, head h], V_l[j, head h] >,

and dO_l (the cotangent of the attention output before its out-projection) is a LINEAR
function of t: s is linear in t and everything between A_l and f_l is differentiated at the
fixed forward point. Following s backwards, with N tokens, MLP(z) = W2 act(W1 ln_2(z)):

    df      = (t - f (f.t)) / |f|              normalisation Jacobian at f
    dfeat   = ln_post^T(df @ proj^T)           LayerNorm vector-Jacobian product
    dOut_i  = dfeat / N                        the mean over tokens
    dZ_i    = dOut_i + ln_2_i^T( W1^T (act'(h_i) * (W2^T (ls_2 * dOut_i))) )
    dO_i    = W_o^T (ls_1 * dZ_i)

W2^T(...) is the same for every token (dOut_i does not depend on i), so only the W1^T
product is per token. :class:`BlockLinearisation` holds the forward quantities this needs and
applies the map to any batch of tokens; :meth:`~BlockLinearisation.materialize` applies it
once to the D basis vectors, after which each optimisation step is one matmul. The ReLU
(the reference's clamp) and the [H, N, N] products are done in :class:`PositiveGradRelevance`
in chunks, recomputed in backward, so nothing of size K*H*N*N is kept. Only first-order
autograd is used, and never through the network.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

@dataclass(frozen=True)
class Budgets:
    """Bytes of MaskInversion's two large temporaries, per device type (decided per device:
    docs/scale.md "MaskInversion on a CPU"). ``relevance_chunk``: one chunk's [B*H, k*N, N]
    attention gradients, in one buffer reused chunk after chunk (the torch relevance path);
    ``map_slice``: the maps, dice terms and their gradients of one slice of masks. A GPU
    wants few wide kernels (at ViT-L/14-336, 21 MB per mask in fp32: 12 masks per chunk,
    113 per slice: 229 kernel ops per step); a CPU wants chunks its caches hold and little
    memory (one mask per chunk at ViT-L: faster there, and a third of the peak)."""

    relevance_chunk: int
    map_slice: int


#: Per ``torch.device.type``; a device type not named here gets "cuda"'s.
BUDGETS = {"cuda": Budgets(relevance_chunk=256 << 20, map_slice=512 << 20),
           "cpu": Budgets(relevance_chunk=16 << 20, map_slice=32 << 20)}


def budgets(device: torch.device) -> Budgets:
    """The temporaries' budgets on ``device`` (:data:`BUDGETS`)."""
    return BUDGETS.get(device.type, BUDGETS["cuda"])


def legrad_start_depth(depth: int, layer_index: int) -> int:
    """The first block LeGrad uses, as the reference resolves ``layer_index``."""
    start = layer_index if layer_index >= 0 else depth + layer_index
    if not 0 <= start < depth:
        raise ValueError(f"layer_index {layer_index} is outside a {depth}-block transformer")
    return start


def _layer_scale(module: nn.Module) -> Tensor | None:
    """gamma of an open_clip LayerScale, None for Identity."""
    if isinstance(module, nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if gamma is None:
        raise NotImplementedError(f"unsupported layer scale {type(module).__name__}")
    return gamma


def _layer_norm_parts(norm: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(x_hat, 1/sigma) of a LayerNorm at x, for its vector-Jacobian product."""
    if not isinstance(norm, nn.LayerNorm):
        raise NotImplementedError(f"unsupported norm {type(norm).__name__}")
    x = x.float()
    mean = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return (x - mean) * rstd, rstd


def _const(weight: Tensor) -> Tensor:
    """A model weight as a constant: no autograd into the network's parameters."""
    return weight.detach().float()


def _layer_norm_vjp(grad: Tensor, x_hat: Tensor, rstd: Tensor, weight: Tensor | None) -> Tensor:
    """d loss / d x of y = LayerNorm(x), given d loss / d y (standard closed form)."""
    g = grad * _const(weight) if weight is not None else grad
    return rstd * (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True))


def _check_block(block: nn.Module) -> None:
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise NotImplementedError("LeGrad needs open_clip ResidualAttentionBlock with nn.MultiheadAttention")
    if attn.bias_k is not None or hasattr(block, "ln_1_kv"):
        raise NotImplementedError("attention with bias_k/cross-attention is not supported")
    if set(dict(block.mlp.named_children())) != {"c_fc", "gelu", "c_proj"}:
        raise NotImplementedError("MLP must be c_fc -> activation -> c_proj (no scale_fc norm)")


@dataclass
class BlockLinearisation:
    """The forward quantities of one block that d s / d A_l depends on, for B images."""

    values: Tensor  # [B, H, N, dh] attention values V
    unit_feature: Tensor  # [B, D] f_l / |f_l|
    feature_norm: Tensor  # [B, 1] |f_l|
    post_hat: Tensor  # [B, C] ln_post normalised input
    post_rstd: Tensor  # [B, 1]
    act_grad: Tensor  # [B, N, 4C] act'(h) at the MLP hidden pre-activation
    ln2_hat: Tensor  # [B, N, C]
    ln2_rstd: Tensor  # [B, N, 1]
    block: nn.Module
    ln_post: nn.LayerNorm
    proj: Tensor  # [C, D]

    @classmethod
    def capture(cls, block: nn.Module, x_in: Tensor, ln_post: nn.Module, proj: Tensor) -> "BlockLinearisation":
        """Recompute block ``block``'s internals from its input ``x_in`` [B, N, C] (batch first)."""
        _check_block(block)
        attn: nn.MultiheadAttention = block.attn
        B, N, C = x_in.shape
        H = attn.num_heads
        with torch.no_grad():
            y1 = block.ln_1(x_in)
            w_v, b_v = attn.in_proj_weight[2 * C :], attn.in_proj_bias[2 * C :]
            values = F.linear(y1, w_v, b_v).view(B, N, H, C // H).transpose(1, 2)
            z = x_in + block.ls_1(block.attention(q_x=y1))
            y2 = block.ln_2(z)
            ln2_hat, ln2_rstd = _layer_norm_parts(block.ln_2, z)
            hidden = block.mlp.c_fc(y2)
            out = z + block.ls_2(block.mlp.c_proj(block.mlp.gelu(hidden)))
            post_hat, post_rstd = _layer_norm_parts(ln_post, out.mean(dim=1))
            feature = ln_post(out.mean(dim=1)).float() @ _const(proj)
        with torch.enable_grad():  # act' of an elementwise activation: first order, exact
            h = hidden.detach().float().requires_grad_(True)
            (act_grad,) = torch.autograd.grad(block.mlp.gelu(h).sum(), h)
        norm = feature.norm(dim=-1, keepdim=True)
        return cls(values.float(), feature / norm, norm, post_hat, post_rstd, act_grad,
                   ln2_hat, ln2_rstd, block, ln_post, proj)

    def attention_cotangent(self, tokens: Tensor) -> Tensor:
        """dO [B, K, N, C]: d(t . f_l)/d(attention output) for unit tokens ``tokens`` [B, K, D].

        Linear in ``tokens``; differentiable w.r.t. them with plain first-order autograd.
        """
        blk, f = self.block, self.unit_feature[:, None, :]
        d_feature = (tokens - f * (tokens * f).sum(-1, keepdim=True)) / self.feature_norm[:, None]
        d_post = d_feature @ _const(self.proj).t()
        d_mean = _layer_norm_vjp(d_post, self.post_hat[:, None], self.post_rstd[:, None], self.ln_post.weight)
        d_out = d_mean / self.act_grad.shape[1]  # [B, K, C], the same for every token
        ls_1, ls_2 = _layer_scale(blk.ls_1), _layer_scale(blk.ls_2)
        d_mlp_out = d_out * _const(ls_2) if ls_2 is not None else d_out
        d_hidden = d_mlp_out @ _const(blk.mlp.c_proj.weight)  # [B, K, 4C], token independent
        d_hidden = d_hidden[:, :, None, :] * self.act_grad[:, None]  # [B, K, N, 4C]
        d_y2 = d_hidden @ _const(blk.mlp.c_fc.weight)
        d_z = d_out[:, :, None, :] + _layer_norm_vjp(
            d_y2, self.ln2_hat[:, None], self.ln2_rstd[:, None], blk.ln_2.weight
        )
        d_attn = d_z * _const(ls_1) if ls_1 is not None else d_z
        return d_attn @ _const(blk.attn.out_proj.weight)

    def materialize(self, chunk: int = 16, dtype: torch.dtype = torch.float32) -> Tensor:
        """The map as a tensor P [B, D, N*C] (attention_cotangent(t) = t @ P), built from the
        D basis tokens in chunks to bound the [chunk, N, 4C] intermediate, stored in ``dtype``."""
        B, D = self.unit_feature.shape
        N, C = self.ln2_hat.shape[1:]
        eye = torch.eye(D, device=self.unit_feature.device)
        operator = self.unit_feature.new_empty(B, D, N * C, dtype=dtype)
        with torch.no_grad():
            for start in range(0, D, chunk):
                basis = eye[start : start + chunk].expand(B, -1, -1)
                operator[:, start : start + chunk] = self.attention_cotangent(basis).flatten(2)
        return operator


class PositiveGradRelevance(torch.autograd.Function):
    """r[b,k,j] = mean_{h,i} relu(<dO[b,k,i,head h], V[b,h,j]>): LeGrad's clamp and means.

    Works in chunks of masks, all heads in one [B*H, k*N, dh] @ [B*H, dh, N] product, into one
    scratch buffer of the device's ``relevance_chunk`` budget (:func:`budgets`). Nothing of size K*H*N*N is kept: backward
    recomputes each chunk's attention gradients (a cheap product: dh = 64 or less) and applies
    the clamp's derivative (0 at exactly 0) with ReLU's own backward kernel, in place.
    """

    @staticmethod
    def forward(ctx, cotangent: Tensor, values: Tensor) -> Tensor:  # type: ignore[override]
        values = values.to(cotangent.dtype)  # bf16 under autocast: one dtype in both passes
        B, K, N, _ = cotangent.shape
        H = values.shape[1]
        ctx.save_for_backward(cotangent, values)
        keys = values.flatten(0, 1).transpose(1, 2)  # [B*H, dh, N]
        accumulate = torch.promote_types(cotangent.dtype, torch.float32)  # bf16 sums in fp32
        out = cotangent.new_empty(B, K, N, dtype=accumulate)
        scratch = _Scratch(cotangent)
        for rows, part in _chunks(cotangent, H):
            scores = torch.bmm(part, keys, out=scratch.take(part.shape[0], part.shape[1], N))  # [B*H, k*N(i), N(j)]
            # over queries, then heads: each mask's sums in one order whatever the chunk's size
            # (one sum over both dims would merge them when k = 1 and round that mask apart)
            per_head = scores.clamp_min_(0).view(B * H, -1, N, N).sum(dim=2, dtype=accumulate)
            torch.sum(per_head.view(B, H, -1, N), dim=1, out=out[:, rows])
        return out.div_(H * N)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        cotangent, values = ctx.saved_tensors
        B, K, N, C = cotangent.shape
        H, dh = values.shape[1], values.shape[3]
        grad = (grad / (H * N)).to(cotangent.dtype)
        vals = values.flatten(0, 1)  # [B*H, N, dh]
        d_cotangent = values.new_empty(cotangent.shape)
        scratch = _Scratch(cotangent)
        for rows, part in _chunks(cotangent, H):
            scores = torch.bmm(part, vals.transpose(1, 2), out=scratch.take(part.shape[0], part.shape[1], N))
            # the output's gradient where the attention gradient was positive, 0 where clamped
            weights = scores.view(B, H, -1, N, N)
            torch.ops.aten.threshold_backward.grad_input(
                grad[:, None, rows, None, :], weights, 0, grad_input=weights)
            d_part = torch.bmm(scores, vals)  # [B*H, k*N, dh]
            heads_split = d_cotangent[:, rows].view(B, -1, N, H, dh).permute(0, 3, 1, 2, 4)
            heads_split.copy_(d_part.view(B, H, -1, N, dh))
        return d_cotangent, None


class _Scratch:
    """One buffer for a chunk's [B*H, k*N, N] attention gradients, reused by every chunk."""

    def __init__(self, like: Tensor) -> None:
        self.like, self.buffer = like, None

    def take(self, *shape: int) -> Tensor:
        if self.buffer is None:  # the first chunk is the largest
            self.buffer = self.like.new_empty(math.prod(shape))
        return self.buffer[: math.prod(shape)].view(shape)


def _chunks(cotangent: Tensor, heads: int):
    """(mask slice, [B*H, k*N, dh] view (a copy when B > 1) of those masks' cotangents, heads
    split), k masks per chunk as the device's ``relevance_chunk`` budget allows."""
    B, K, N, C = cotangent.shape
    chunk_bytes = budgets(cotangent.device).relevance_chunk
    step = max(1, chunk_bytes // (B * heads * N * N * cotangent.element_size()))
    for start in range(0, K, step):
        rows = slice(start, min(K, start + step))
        part = cotangent[:, rows].reshape(B, -1, N, heads, C // heads).permute(0, 3, 1, 2, 4)
        yield rows, part.reshape(B * heads, -1, C // heads)


#: ``invert.kernel`` (schemas/spec.py): which implementation computes the clamped relevance.
KERNELS = ("auto", "torch", "triton")


def triton_unavailable(device: torch.device) -> str | None:
    """Why the fused Triton relevance cannot run on ``device`` (None when it can): it needs
    CUDA, or Triton's CPU interpreter (``TRITON_INTERPRET=1``, tests only), and triton."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"the Triton kernel needs a CUDA device (this stage runs on {device.type}; TRITON_INTERPRET is unset)"
    try:
        import triton  # noqa: F401  (shipped with CUDA builds of torch)
    except ImportError:
        return "the Triton kernel needs the triton package, which is not installed"
    return None


def relevance_function(kernel: str, device: torch.device):
    """The ``apply`` of the relevance autograd Function ``kernel`` names on ``device``:
    "auto" is the fused Triton kernel on CUDA (memory-bound there: it never writes the
    K*H*N*N attention gradients) and this module's torch path elsewhere (a CPU's caches make
    the chunked products cheap, and Triton does not compile for CPUs); "triton" where it
    cannot run is a ValueError naming why."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    if kernel == "auto":
        kernel = "triton" if device.type == "cuda" and triton_unavailable(device) is None else "torch"
    if kernel == "torch":
        return PositiveGradRelevance.apply
    reason = triton_unavailable(device)
    if reason is not None:
        raise ValueError(reason)
    from .legrad_triton import FusedPositiveGradRelevance  # imports triton: only when chosen

    return FusedPositiveGradRelevance.apply


def relevance_to_map(relevance: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """Patch relevance [B, K, N] (CLS first) -> min-max normalised map [B, K, gh*p, gw*p].

    Bilinear upsampling by the patch size (align_corners=False), then per-map min-max as the
    reference's ``min_max``; the denominator is floored at 1e-12 so a constant map gives 0
    instead of the reference's NaN.
    """
    B, K, _ = relevance.shape
    patches = relevance[:, :, 1:].reshape(B, K, *grid)
    up = F.interpolate(patches, scale_factor=patch, mode="bilinear")
    flat = up.reshape(B, K, -1)
    low = flat.min(dim=-1, keepdim=True)[0]
    high = flat.max(dim=-1, keepdim=True)[0]
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(up.shape)
