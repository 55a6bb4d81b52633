"""The inputs of the MaskInversion benchmarks, shared by ``bench_invert.py`` (masktok) and
``tools/upstream_invert.py`` (maskinversion-torch, in its own environment): the towers'
shapes with seeded random weights, the image and the masks. Imports nothing from masktok
and only what open_clip 2.23 and 3.x share."""

from __future__ import annotations

import numpy as np
import open_clip
import torch

SHAPES = {
    "issue": dict(embed_dim=384, image_size=224, layers=12, width=768, head_width=64, patch_size=16),
    "vit-l-14-336": dict(embed_dim=768, image_size=336, layers=24, width=1024, head_width=64, patch_size=14),
}
TEXT = dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)  # unused, kept small


def build(shape: str, quick_gelu: bool) -> torch.nn.Module:
    cfg = dict(SHAPES[shape])
    embed_dim = cfg.pop("embed_dim")
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim, cfg, TEXT, quick_gelu=quick_gelu).eval()


def make_masks(k: int, size: int, seed: int) -> torch.Tensor:
    """k - 1 random boxes and ellipses, then the background (what none covers)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((k, size, size), np.float32)
    for i in range(k - 1):
        cy, cx = rng.uniform(0, size, 2)
        hy, hx = rng.uniform(4, size / 3, 2)
        inside = (np.abs(yy - cy) < hy) & (np.abs(xx - cx) < hx) if i % 2 else \
            ((yy - cy) / hy) ** 2 + ((xx - cx) / hx) ** 2 < 1
        masks[i] = inside
    masks[-1] = 1 - masks[:-1].max(0)
    return torch.from_numpy(masks)


def make_image(shape: str, images: int = 1) -> torch.Tensor:
    """``images`` seeded random images at the shape's size."""
    size = SHAPES[shape]["image_size"]
    return torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
