"""What the invert stage does with CLIP before MaskInversion: LLaVA-1.5 'pad' preprocessing of
an image and its masks, and the one vision forward per image (:func:`encode_vision`) that
gives the global token, the pooled patch tokens and what LeGrad needs. The model itself is
built in ``models/clip.py``; MaskInversion is in ``maskinversion.py`` (LeGrad in ``legrad.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..schemas.record import FINE_GRID, POOLED_GRID
from .model_inputs import ClipFrame, llava_pad_mask_arrays, llava_pad_pixels, pad_offsets

__all__ = ["ClipFrame", "pad_offsets", "llava_pad_image", "llava_pad_masks", "normalise_pixels", "encode_vision",
           "VisionFeatures", "pool_patch_grid"]

# --- preprocessing as LLaVA-1.5 ('pad') -----------------------------------------------------


def normalise_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [S, S, 3] (any device) -> float32 [3, S, S]: /255, then (x - mean) / std."""
    x = pixels.permute(2, 0, 1).float() / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - mean_t) / std_t


def llava_pad_image(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> normalised float tensor [3, size, size], as LLaVA-1.5 'pad':
    :func:`~masktok.stages.model_inputs.llava_pad_pixels` (the CPU half), then /255 and
    (x - mean) / std (:func:`normalise_pixels`, on the model's device in the invert stage)."""
    return normalise_pixels(torch.from_numpy(llava_pad_pixels(image, size, mean).copy()), mean, std)


def llava_pad_masks(masks: Iterable[np.ndarray], size: int) -> torch.Tensor:
    """Binary masks [H, W] -> soft masks [K, size, size] in [0, 1], as a tensor
    (:func:`~masktok.stages.model_inputs.llava_pad_mask_arrays`)."""
    return torch.from_numpy(llava_pad_mask_arrays(masks, size))


# --- one vision forward ----------------------------------------------------------------------


@dataclass
class VisionFeatures:
    """Everything the record and LeGrad need from one forward of B images."""

    global_token: torch.Tensor  # [B, D] what open_clip's encode_image returns
    patch_tokens: torch.Tensor  # [B, 36, C] penultimate-block patch tokens, pooled 4x4
    fine_patch_tokens: torch.Tensor  # [B, 144, C] the same, pooled 2x2 (stored with write.patch_grid = 12)
    patch_norm_mean: torch.Tensor  # [B] over the unpooled patch-token norms
    patch_norm_std: torch.Tensor  # [B] population std (ddof 0)
    block_inputs: dict[int, torch.Tensor]  # residual stream entering block l, batch first
    grid: tuple[int, int]  # patch grid (rows, cols)


def pool_patch_grid(patches: torch.Tensor, grid: tuple[int, int], side: int) -> torch.Tensor:
    """[B, rows * cols, C] raster-order patch tokens -> [B, side * side, C], average-pooled
    (windows of rows/side when side divides the grid, as 24x24 -> 6x6 or 12x12)."""
    grid_view = patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)
    return F.adaptive_avg_pool2d(grid_view, side).flatten(2).transpose(1, 2)


@torch.no_grad()
def encode_vision(model: torch.nn.Module, images: torch.Tensor, keep_inputs_from: int) -> VisionFeatures:
    """One forward of open_clip ViT ``model.visual`` over ``images`` [B, 3, S, S].

    Uses the tower's own ``_embeds``/blocks/``_pool``, so ``global_token`` is
    ``encode_image`` (to float rounding: under no_grad torch may take its fused MHA path). Patch tokens are the output of the second-to-last block, CLS
    excluded (LLaVA's ``mm_vision_select_layer=-2``), before any norm; they are average
    pooled to a 6x6 grid (4x4 windows on ViT-L/14-336's 24x24 grid), and to a 12x12 grid
    (2x2 windows; a few microseconds beside the forward, so always computed: the invert stage
    keeps it only when the cache asks for it). Both pool the fp32 tokens of the full grid, so
    each is exact average pooling of it (a tiny preset's grid that 6 or 12 does not divide is
    pooled adaptively, windows overlapping). The inputs of
    blocks ``>= keep_inputs_from`` are kept for LeGrad.
    """
    visual = model.visual
    transformer = visual.transformer
    x = visual._embeds(images)
    grid = tuple(int(g) for g in visual.grid_size)
    blocks = list(transformer.resblocks)
    kept: dict[int, torch.Tensor] = {}
    penultimate = x
    for index, block in enumerate(blocks):
        if index >= keep_inputs_from:
            kept[index] = x
        x = block(x) if transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        if index == len(blocks) - 2:
            penultimate = x
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    patches = penultimate[:, 1:].float()
    norms = patches.norm(dim=-1)
    pooled_patches = pool_patch_grid(patches, grid, POOLED_GRID)
    fine_patches = pool_patch_grid(patches, grid, FINE_GRID)
    return VisionFeatures(
        global_token=pooled.float(),
        patch_tokens=pooled_patches,
        fine_patch_tokens=fine_patches,
        patch_norm_mean=norms.mean(dim=1),
        patch_norm_std=norms.std(dim=1, unbiased=False),
        block_inputs=kept,
        grid=grid,
    )
