"""MaskInversion core (paper section 3.2): one token per mask whose LeGrad map matches it.

Semantics of the reference ``maskinversion-torch`` 1.1 (``MaskInversion.compute_maskinversion``):

- the tokens start as the image embedding (``encode_image``, not normalised), one per mask;
- each step: t = normalize(token); map = LeGrad(t) (see ``legrad.py``), bilinearly resized
  to the mask size; loss = mean_k dice_k + alpha * mean_k (1 - normalize(image emb) . t_k),
  with dice_k = 1 - (2 sum(map*mask) + 1) / (sum(map) + sum(mask) + 1);
- AdamW(lr, weight_decay) on the tokens (default betas, eps), ``iterations`` steps;
- the returned token is the raw optimised vector (not normalised).

Unlike the reference, all masks of an image (and several images) share one forward, and the
optimisation never differentiates through the network twice: the map before its clamp is
linear in t (``legrad.py``). Masks are independent (AdamW is elementwise and each map
depends on its own token only), so batching does not change any token: images with fewer
masks are padded with zero-weight rows, and each image keeps the reference's 1/K_b scaling.
The reported loss is each mask's dice loss for the returned token, i.e. the map after the
last step (the reference reports none per mask).

Cost per image (N tokens, width C, embed D, K masks): the operator P is built once from the
D basis tokens (about D*N*5C^2 multiply-adds per LeGrad layer); each step is then a [K, D]
by [D, N*C] product, K*N^2*C for the clamped attention gradients, and the reverse of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .vision import VisionFeatures, encode_vision
from .legrad import (BlockLinearisation, PositiveGradRelevance, budgets, legrad_start_depth, relevance_function,
                     relevance_to_map)

#: Largest precomputed LeGrad operator (all layers, all images of a group) kept in memory.
OPERATOR_BUDGET_BYTES = 4 << 30


def dice_loss_per_mask(maps: Tensor, targets: Tensor) -> Tensor:
    """The reference's dice loss (smooth 1) per mask: [..., H, W] x2 -> [...]; defined for
    empty and full masks alike."""
    m, t = maps.flatten(-2), targets.flatten(-2)
    return 1 - (2 * (m * t).sum(-1) + 1) / (m.sum(-1) + t.sum(-1) + 1)


@dataclass
class _Explainer:
    """LeGrad maps of B images for any unit tokens [B, K, D]."""

    layers: list[BlockLinearisation]
    operators: list[Tensor | None]  # per layer: P [B, D, N*C] or None (apply lazily)
    grid: tuple[int, int]
    patch: int
    #: the clamped relevance's autograd ``apply`` (torch path or fused Triton kernel)
    relevance: Callable[[Tensor, Tensor], Tensor] = field(default=PositiveGradRelevance.apply)

    def cotangents(self, unit_tokens: Tensor) -> list[Tensor]:
        """Per LeGrad layer, dO [B, K, N, C] for unit tokens [B, K, D] (linear in them). A
        bf16 operator is read by a bf16 product; its result is fp32 unless autocast is on."""
        B, K, _ = unit_tokens.shape
        autocast = torch.is_autocast_enabled(unit_tokens.device.type)
        out = []
        for layer, operator in zip(self.layers, self.operators):
            if operator is None:
                out.append(layer.attention_cotangent(unit_tokens))
                continue
            product = unit_tokens.to(operator.dtype) @ operator
            out.append((product if autocast else product.float()).view(B, K, layer.values.shape[2], -1))
        return out

    def maps_from(self, cotangents: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Min-max normalised maps [B, K, *size] from the layers' cotangents."""
        relevance = sum(self.relevance(c, layer.values) for c, layer in zip(cotangents, self.layers))
        maps = relevance_to_map(relevance.float(), self.grid, self.patch)
        if maps.shape[-2:] != size:  # the reference resizes the map to the mask, not the reverse
            maps = F.interpolate(maps, size=size, mode="bilinear")
        return maps

    def maps(self, unit_tokens: Tensor, size: tuple[int, int]) -> Tensor:
        return self.maps_from(self.cotangents(unit_tokens), size)


def _explainer(model: torch.nn.Module, features: VisionFeatures, start: int, masks_per_image: int,
               iterations: int, operator: str, operator_dtype: torch.dtype = torch.float32,
               kernel: str = "auto") -> _Explainer:
    visual = model.visual
    blocks = list(visual.transformer.resblocks)
    layers = [
        BlockLinearisation.capture(blocks[i], features.block_inputs[i], visual.ln_post, visual.proj)
        for i in range(start, len(blocks))
    ]
    B, D = features.global_token.shape
    N, C = layers[0].ln2_hat.shape[1:]
    size = B * D * N * C * operator_dtype.itemsize * len(layers)
    # Precomputing costs about D token-applications once; applying lazily costs about
    # 2K (forward + backward) per step. Precompute when cheaper and it fits the budget.
    materialize = operator == "materialize" or (
        operator == "auto" and D <= 2 * masks_per_image * iterations and size <= OPERATOR_BUDGET_BYTES
    )
    operators = [layer.materialize(dtype=operator_dtype) if materialize else None for layer in layers]
    relevance = relevance_function(kernel, features.global_token.device)
    return _Explainer(layers, operators, features.grid, int(visual.patch_size[0]), relevance)


def _masks_per_slice(images: int, size: tuple[int, int], device: torch.device) -> int:
    """Masks per forward/backward slice so one slice's maps stay within the device's
    ``map_slice`` budget (``legrad.budgets``)."""
    per_mask = images * 40 * size[0] * size[1]  # about ten float32 temporaries per pixel
    return max(1, budgets(device).map_slice // per_mask)


def invert_batch(
    model: torch.nn.Module,
    images: Tensor,
    masks: list[Tensor],
    *,
    iterations: int = 10,
    lr: float = 0.5,
    alpha: float = 0.0,
    weight_decay: float = 0.0,
    layer_index: int = -1,
    operator: str = "auto",
    operator_dtype: torch.dtype = torch.float32,
    features: VisionFeatures | None = None,
    kernel: str = "auto",
) -> tuple[list[Tensor], list[Tensor], VisionFeatures]:
    """MaskInversion for B preprocessed images [B, 3, S, S] with masks[b] [K_b, H, W] (one
    H, W for all). Returns per-image tokens [K_b, D], dice losses [K_b] and the forward's
    :class:`VisionFeatures`. ``operator``: "auto", "materialize" or "lazy" (same result);
    ``operator_dtype``: what a materialised operator is stored in (bf16: half the traffic);
    ``kernel``: the relevance's implementation, "auto" (fused Triton on CUDA, torch
    elsewhere), "torch" or "triton" (``legrad.relevance_function``)."""
    if operator not in ("auto", "materialize", "lazy"):
        raise ValueError(f"operator must be auto, materialize or lazy, not {operator!r}")
    depth = len(model.visual.transformer.resblocks)
    start = legrad_start_depth(depth, layer_index)
    if features is None:
        features = encode_vision(model, images, keep_inputs_from=start)
    B, D = features.global_token.shape
    counts = [int(m.shape[0]) for m in masks]
    k_max = max(counts, default=0)
    if k_max == 0:
        empty = features.global_token.new_zeros(0, D)
        return [empty] * B, [empty[:, 0]] * B, features
    size = tuple(masks[counts.index(k_max)].shape[-2:])
    targets = features.global_token.new_zeros(B, k_max, *size)
    weights = features.global_token.new_zeros(B, k_max)  # 1/K_b: the reference's mean over masks
    for b, m in enumerate(masks):
        if m.shape[0]:
            targets[b, : m.shape[0]] = m.to(targets)
            weights[b, : m.shape[0]] = 1.0 / m.shape[0]

    explainer = _explainer(model, features, start, k_max, iterations, operator, operator_dtype, kernel)
    image_unit = F.normalize(features.global_token, dim=-1)[:, None, :]
    tokens = features.global_token[:, None, :].expand(B, k_max, D).clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([tokens], lr=lr, weight_decay=weight_decay)
    # Masks never interact and the loss is a sum over them, so after one product for all
    # masks (cotangents = t @ P), the map, dice and their backward run on slices of masks,
    # accumulating into the cotangents' grad; then one product back to the tokens.
    step = _masks_per_slice(B, size, targets.device)
    slices = [slice(rows, rows + step) for rows in range(0, k_max, step)]
    for _ in range(iterations):
        optimizer.zero_grad()
        unit_graph = F.normalize(tokens, dim=-1)
        unit = unit_graph.detach().requires_grad_(True)
        cotangent_graph = explainer.cotangents(unit)
        grads: list[list[Tensor]] = [[] for _ in cotangent_graph]
        for part in slices:
            # a leaf per slice: its grad has the slice's size (no full-size zeros per slice)
            leaves = [c.detach()[:, part].requires_grad_(True) for c in cotangent_graph]
            loss = dice_loss_per_mask(explainer.maps_from(leaves, size), targets[:, part])
            if alpha:  # the regulariser's graph only where it counts (the default alpha is 0)
                loss = loss + alpha * (1 - (unit[:, part] * image_unit).sum(-1))
            (loss * weights[:, part]).sum().backward()
            for collected, leaf in zip(grads, leaves):
                collected.append(leaf.grad)
        torch.autograd.backward(cotangent_graph, [g[0] if len(g) == 1 else torch.cat(g, dim=1) for g in grads])
        unit_graph.backward(unit.grad)
        optimizer.step()
    final = torch.empty_like(weights)
    with torch.no_grad():
        cotangents = explainer.cotangents(F.normalize(tokens, dim=-1))
        for part in slices:
            maps = explainer.maps_from([c[:, part] for c in cotangents], size)
            final[:, part] = dice_loss_per_mask(maps, targets[:, part])
    tokens = tokens.detach()
    return ([tokens[b, :k] for b, k in enumerate(counts)],
            [final[b, :k] for b, k in enumerate(counts)], features)


def legrad_maps(model: torch.nn.Module, images: Tensor, tokens: Tensor, *, layer_index: int = -1,
                operator: str = "auto", kernel: str = "auto") -> Tensor:
    """LeGrad maps [B, K, S, S] of tokens [B, K, D] (normalised here, as MaskInversion does)
    for preprocessed images [B, 3, S, S]: the map MaskInversion's first step sees when
    ``tokens`` are the image embeddings."""
    start = legrad_start_depth(len(model.visual.transformer.resblocks), layer_index)
    features = encode_vision(model, images, keep_inputs_from=start)
    explainer = _explainer(model, features, start, tokens.shape[1], 1, operator, kernel=kernel)
    with torch.no_grad():
        return explainer.maps(F.normalize(tokens.float(), dim=-1), tuple(images.shape[-2:]))


def invert_masks(
    model: torch.nn.Module,
    image: Tensor,
    masks: Tensor,
    *,
    iterations: int = 10,
    lr: float = 0.5,
    alpha: float = 0.0,
    weight_decay: float = 0.0,
    layer_index: int = -1,
) -> tuple[Tensor, Tensor]:
    """MaskInversion tokens for all masks of one image, optimised together.

    ``model``: an open_clip CLIP with a ViT image tower (GELU or QuickGELU), in eval mode.
    ``image``: [3, H, W] already preprocessed for the model (e.g. :func:`clip.llava_pad_image`).
    ``masks``: [K, h, w] in the image's frame, values in [0, 1]; any size (the map is resized
    to it, as in the reference). Returns tokens [K, D] (raw, as the reference returns them)
    and each mask's final dice loss [K]. Hyper-parameters mean what they mean in
    ``maskinversion-torch`` 1.1 (``weight_decay`` is its ``wd``).
    """
    if image.dim() != 3 or masks.dim() != 3:
        raise ValueError(f"expected image [3, H, W] and masks [K, H, W], got {tuple(image.shape)} "
                         f"and {tuple(masks.shape)}")
    tokens, losses, _ = invert_batch(
        model, image[None], [masks], iterations=iterations, lr=lr, alpha=alpha,
        weight_decay=weight_decay, layer_index=layer_index,
    )
    return tokens[0], losses[0]
