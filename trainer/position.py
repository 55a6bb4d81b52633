"""Fixed sinusoidal embedding of an object's box centre (paper 3.2), added to its token.

The centre ``(cx, cy)`` is normalised by the original image size, so it lies in [0, 1]
whatever the resolution: ``cx = (x0 + x1) / 2 / width``, ``cy = (y0 + y1) / 2 / height``.
The background's box is the whole image, so its centre is (0.5, 0.5).

DETR's convention (``PositionEmbeddingSine(normalize=True)``), with x first: for a width
D (a multiple of 4), ``F = D / 4`` frequencies per coordinate,

    w_i  = 2 * pi / 10000 ** (i / F)                         i = 0 .. F-1
    PE   = [sin(cx w_0), cos(cx w_0), ..., sin(cx w_{F-1}), cos(cx w_{F-1}),
            sin(cy w_0), cos(cy w_0), ..., sin(cy w_{F-1}), cos(cy w_{F-1})]

(DETR writes ``10000 ** (2 * (j // 2) / (D / 2))`` for dim j of one half: the same w_i.)
Nothing is learnt: the same box always gets the same vector, in training and at test time.
"""

from __future__ import annotations

import math

import torch

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
