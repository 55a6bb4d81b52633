"""Compose one image's visual tokens from its cached record (docs/trainer.md, "Token spec").

Per image, in this order: the global token, the patch tokens (pooled or pruned, see
trainer/visual/token_spec.py), then the object tokens. The result keeps the two widths apart
(``patch`` is [p, C], ``glob``/``objects`` are [., D]) because they go through different
projectors (trainer/model/mask_llava.py).

Objects: the rows ``0 .. num_objects-1`` of the record, background last.

- ``obj:K`` (filtered, the paper's test-time rule, 3.5): the kept rows (``keep_rank >= 0``)
  other than the background are sorted by keep_rank (IoU filter, then confidence); the
  first ``K - 1`` of them are taken, then the background; suppressed rows are never used.
  An empty background (``keep_rank == -1``: every pixel is covered by some mask) has no
  token worth spending and is dropped; then up to ``K`` objects are taken instead, so
  ``obj:K`` always means "at most K object tokens". ``obj`` alone takes every kept row.
- ``obj:K:all`` (the paper's training input, 4.3): every row in stored order (detector
  confidence order; the first ``K - 1`` when K is given), then the background, whatever
  keep_rank says. Suppressed and empty masks are included: the invert stage optimises a
  token for every row, an empty mask's towards an all-zero map, so an empty mask gives
  its MaskInversion token plus its box's centre embedding, and an empty background its
  token plus the image centre's. So ``cls,patch:36,obj:101:all`` is 138 tokens for every
  image with 101 rows (a cache planned with ``filter.max_objects`` stores fewer rows).

Each object token is first norm-scaled (trainer/visual/scaling.py), then the fixed sinusoidal
embedding of its box centre is added (the end of this module), so the position signal has
the same size whatever the scaling mode. The global token is scaled, not positioned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...schemas.errors import TokenSpecError
from .refilter import refiltered_keep_rank
from .scaling import CacheStats, image_norms, scale_tokens
from .token_spec import TokenSpec, patch_source, prune_indices


@dataclass
class VisualTokens:
    """One image's composed tokens (float32): glob [0|1, D], patch [p, C], objects [o, D]."""

    glob: torch.Tensor
    patch: torch.Tensor
    objects: torch.Tensor

    def __len__(self) -> int:
        return len(self.glob) + len(self.patch) + len(self.objects)


def select_objects(keep_rank: np.ndarray, k: int | None) -> np.ndarray:
    """Row indices of the objects to use, in token order (see the module docstring).

    ``keep_rank`` holds the record's real rows only (background last).
    """
    n = len(keep_rank)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bg = n - 1
    objects = [i for i in range(n - 1) if keep_rank[i] >= 0]
    objects.sort(key=lambda i: int(keep_rank[i]))
    has_bg = keep_rank[bg] >= 0
    if k is not None:
        objects = objects[: max(k - int(has_bg), 0)]
    return np.asarray(objects + ([bg] if has_bg else []), dtype=np.int64)


def all_rows(n: int, k: int | None) -> np.ndarray:
    """``obj[:K]:all``: the first ``K - 1`` of the ``n - 1`` object rows in stored order, then
    the background (row ``n - 1``); every row when ``k`` is None."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    objects = list(range(n - 1))
    if k is not None:
        objects = objects[: max(k - 1, 0)]
    return np.asarray(objects + [n - 1], dtype=np.int64)


def object_rows(record: dict[str, Any], spec: TokenSpec) -> np.ndarray:
    """The record's object rows ``spec`` takes, in token order (see the module docstring)."""
    if spec.object_mode == "all":
        return all_rows(len(record["keep_rank"]), spec.objects)
    keep = record["keep_rank"] if spec.iou is None else refiltered_keep_rank(record, spec.iou)
    return select_objects(np.asarray(keep), spec.objects)


def reduce_patches(patch: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """[g*g, C] raster-order patch tokens of a g x g grid (the 36 of the 6x6 grid; the 144 of
    the 12x12 grid for the counts only it gives) -> [n, C] (pool / max / prune, see
    trainer/visual/token_spec.py)."""
    if n == len(patch) and mode != "prune":
        return patch
    if mode == "prune":
        return patch[torch.as_tensor(prune_indices(n))]
    _, side, k = patch_source(n)
    if len(patch) != side * side:
        raise ValueError(f"patch:{n} pools the {side}x{side} grid, got {len(patch)} tokens")
    grid = patch.T.reshape(1, -1, side, side)  # [1, C, side, side], row-major like the cache
    pooled = F.avg_pool2d(grid, k) if mode == "pool" else F.max_pool2d(grid, k)
    return pooled.flatten(2)[0].T.contiguous()  # [g*g, C], raster order


def compose(record: dict[str, Any], spec: TokenSpec, scaling: str = "none",
            stats: CacheStats | None = None) -> VisualTokens:
    """Compose an image's tokens from its record (numpy arrays, object axis trimmed to
    ``num_objects``, as the readers in trainer/data/readers.py return them)."""
    norms = image_norms(record, scaling)
    mu_p, sigma_p, own = norms.patch_mean, norms.patch_std, (norms.object_mean, norms.object_std)
    d = record["global_token"].shape[-1]
    c = record["patch_tokens"].shape[-1]
    if spec.cls:
        glob = torch.from_numpy(np.asarray(record["global_token"], dtype=np.float32)).reshape(1, d)
        glob = scale_tokens(glob, "global", scaling, mu_p, sigma_p, stats)
    else:
        glob = torch.zeros(0, d)
    if spec.patches:
        source = "patch_tokens" if spec.patch_mode == "prune" else patch_source(spec.patches)[0]
        if source not in record:  # never a silent prune: the cache lacks the 12x12 grid
            raise TokenSpecError(f"token spec {str(spec)!r}: patch:{spec.patches} needs the 12x12 patch grid, "
                                 f"which image {record.get('image_id')!r} lacks (the cache was planned without "
                                 "write.patch_grid = 12); its 6x6 grid pools exactly to 1, 4, 9 or 36")
        patch = reduce_patches(torch.from_numpy(np.asarray(record[source], dtype=np.float32)),
                               spec.patches, spec.patch_mode)
    else:
        patch = torch.zeros(0, c)
    objects = torch.zeros(0, d)
    if spec.use_objects:
        rows = object_rows(record, spec)
        if len(rows):
            tokens = torch.from_numpy(np.asarray(record["object_tokens"], dtype=np.float32)[rows])
            tokens = scale_tokens(tokens, "object", scaling, mu_p, sigma_p, stats, own)
            boxes = torch.from_numpy(np.asarray(record["boxes"], dtype=np.float32)[rows])
            objects = tokens + box_center_embedding(boxes, float(record["width"]), float(record["height"]), d)
    return VisualTokens(glob=glob, patch=patch, objects=objects)


# The box-centre embedding (paper 3.2)
#
# Fixed sinusoidal embedding of an object's box centre (paper 3.2), added to its token.
#
# The centre ``(cx, cy)`` is normalised by the original image size, so it lies in [0, 1]
# whatever the resolution: ``cx = (x0 + x1) / 2 / width``, ``cy = (y0 + y1) / 2 / height``.
# The background's box is the whole image, so its centre is (0.5, 0.5).
#
# DETR's convention (``PositionEmbeddingSine(normalize=True)``), with x first: for a width
# D (a multiple of 4), ``F = D / 4`` frequencies per coordinate,
#
#     w_i  = 2 * pi / 10000 ** (i / F)                         i = 0 .. F-1
#     PE   = [sin(cx w_0), cos(cx w_0), ..., sin(cx w_{F-1}), cos(cx w_{F-1}),
#             sin(cy w_0), cos(cy w_0), ..., sin(cy w_{F-1}), cos(cy w_{F-1})]
#
# (DETR writes ``10000 ** (2 * (j // 2) / (D / 2))`` for dim j of one half: the same w_i.)
# Nothing is learnt: the same box always gets the same vector, in training and at test time.

TEMPERATURE = 10000.0
SCALE = 2 * math.pi


def sincos_2d(cx: torch.Tensor, cy: torch.Tensor, dim: int) -> torch.Tensor:
    """[n] normalised centres -> [n, dim] embeddings (layout in the module docstring)."""
    if dim % 4:
        raise ValueError(f"the sinusoidal box embedding needs a width divisible by 4, got {dim}")
    f = dim // 4
    omega = SCALE / TEMPERATURE ** (torch.arange(f, dtype=torch.float32) / f)

    def one(c: torch.Tensor) -> torch.Tensor:
        angles = c.float()[:, None] * omega[None, :]
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # sin, cos interleaved

    return torch.cat([one(cx), one(cy)], dim=-1)


def box_center_embedding(boxes: torch.Tensor, width: float, height: float, dim: int) -> torch.Tensor:
    """[n, 4] xyxy boxes in original pixels -> [n, dim] embeddings of their centres."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 / max(width, 1.0)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 / max(height, 1.0)
    return sincos_2d(cx, cy, dim)
