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
from PIL import Image

from ..schemas.record import POOLED_GRID

# --- preprocessing as LLaVA-1.5 ('pad') -----------------------------------------------------


def pad_offsets(width: int, height: int) -> tuple[int, int, int]:
    """(side, left, top) of LLaVA's ``expand2square``: the image centred on a square canvas."""
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def llava_pad_image(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> normalised float tensor [3, size, size], as LLaVA-1.5 'pad'.

    The canvas is filled with the mean colour as LLaVA does (``int(m * 255)`` per channel),
    then PIL bicubic resizes it to ``size`` (what both CLIPImageProcessor and open_clip's
    transform do for a square image), then /255 and (x - mean) / std.
    """
    height, width = image.shape[:2]
    side, left, top = pad_offsets(width, height)
    canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in mean))
    canvas.paste(Image.fromarray(image, "RGB"), (left, top))
    resized = np.asarray(canvas.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(resized).permute(2, 0, 1)
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def llava_pad_masks(masks: Iterable[np.ndarray], size: int) -> torch.Tensor:
    """Binary masks [H, W] of the original image -> soft masks [K, size, size] in [0, 1].

    Same geometry as :func:`llava_pad_image` (same canvas offset, PIL's pixel-centre
    convention); PIL bilinear instead of bicubic so coverage stays in [0, 1] without ringing.
    One mask at a time, so memory stays bounded for large images.
    """
    out = []
    for mask in masks:
        height, width = mask.shape
        side, left, top = pad_offsets(width, height)
        canvas = Image.new("F", (side, side), 0.0)
        canvas.paste(Image.fromarray(np.asarray(mask, dtype=np.float32), "F"), (left, top))
        out.append(np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float32))
    if not out:
        return torch.zeros(0, size, size)
    return torch.from_numpy(np.clip(np.stack(out), 0.0, 1.0))


# --- one vision forward ----------------------------------------------------------------------


@dataclass
class VisionFeatures:
    """Everything the record and LeGrad need from one forward of B images."""

    global_token: torch.Tensor  # [B, D] what open_clip's encode_image returns
    patch_tokens: torch.Tensor  # [B, 36, C] penultimate-block patch tokens, pooled 4x4
    patch_norm_mean: torch.Tensor  # [B] over the unpooled patch-token norms
    patch_norm_std: torch.Tensor  # [B] population std (ddof 0)
    block_inputs: dict[int, torch.Tensor]  # residual stream entering block l, batch first
    grid: tuple[int, int]  # patch grid (rows, cols)


@torch.no_grad()
def encode_vision(model: torch.nn.Module, images: torch.Tensor, keep_inputs_from: int) -> VisionFeatures:
    """One forward of open_clip ViT ``model.visual`` over ``images`` [B, 3, S, S].

    Uses the tower's own ``_embeds``/blocks/``_pool``, so ``global_token`` is
    ``encode_image`` (to float rounding: under no_grad torch may take its fused MHA path). Patch tokens are the output of the second-to-last block, CLS
    excluded (LLaVA's ``mm_vision_select_layer=-2``), before any norm; they are average
    pooled to a 6x6 grid (4x4 windows on ViT-L/14-336's 24x24 grid). The inputs of
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
    grid_view = patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)
    pooled_patches = F.adaptive_avg_pool2d(grid_view, POOLED_GRID).flatten(2).transpose(1, 2)
    return VisionFeatures(
        global_token=pooled.float(),
        patch_tokens=pooled_patches,
        patch_norm_mean=norms.mean(dim=1),
        patch_norm_std=norms.std(dim=1, unbiased=False),
        block_inputs=kept,
        grid=grid,
    )
