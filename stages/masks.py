"""The mask sources of the paper's Table 2 that need no SAM: ``boxes`` and ``tiles``.

``masks.source`` picks how an item gets its object masks:

* ``sam`` (default): :class:`~masktok.stages.detect.DetectStage` then
  :class:`~masktok.stages.segment.SegmentStage`.
* ``boxes``: :class:`~masktok.stages.detect.DetectStage` then :class:`BoxMaskStage`: each
  detector box becomes a box-shaped mask.
* ``tiles``: :class:`TileMaskStage` alone (no detector, no SAM): the 2x2, 3x3, 4x4 and 5x5
  grids, 54 masks.

Rasterising a box: pixel (column c, row r) covers ``[c, c+1) x [r, r+1)`` and belongs to
the mask when its centre ``(c + 0.5, r + 0.5)`` lies in ``[x0, x1) x [y0, y1)``. An integer
box ``[x0, y0, x1, y1]`` therefore covers exactly columns ``x0..x1-1`` and rows
``y0..y1-1``, and a box thinner than half a pixel gives an empty mask (the filter never
keeps an empty mask).

Neither source has a SAM prediction: ``mask_iou`` is 1.0 (the mask is exactly the region
it stands for). Tiles have no detector either: every tile scores 1.0, and as the filter
orders by score with ties in row order, tiles rank in grid order, coarsest grid first
(2x2 tiles row by row, then 3x3, ...), so ``filter.max_objects`` keeps the coarse grids.
"""

from __future__ import annotations

import math

import numpy as np

from .batch import Batch, encode_mask, failed

#: Table 2's tiled masks: 4 + 9 + 16 + 25 = 54.
TILE_GRIDS: tuple[int, ...] = (2, 3, 4, 5)


def box_pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel indices ``[first, stop)`` whose centres lie in ``[lo, hi)``, clipped to ``size``."""
    first = min(max(math.ceil(lo - 0.5), 0), size)
    stop = min(max(math.ceil(hi - 0.5), first), size)
    return first, stop


def box_masks(boxes: np.ndarray, width: int, height: int) -> list[dict]:
    """Box-shaped masks (COCO RLE) for float ``[M, 4]`` xyxy pixel boxes."""
    canvas = np.zeros((height, width), dtype=np.uint8, order="F")
    rles = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0, c1 = box_pixel_span(x0, x1, width)
        r0, r1 = box_pixel_span(y0, y1, height)
        canvas[r0:r1, c0:c1] = 1
        rles.append(encode_mask(canvas))
        canvas[r0:r1, c0:c1] = 0
    return rles


def tile_boxes(width: int, height: int, grids: tuple[int, ...] = TILE_GRIDS) -> np.ndarray:
    """Integer-edged tiles (float32 ``[sum n^2, 4]`` xyxy), grid by grid, each row-major.

    Edges are ``floor(k * size / n)``, so the n x n tiles of one grid partition the image
    exactly (tiles differ by at most one pixel in width or height).
    """
    rows = []
    for n in grids:
        xs = [k * width // n for k in range(n + 1)]
        ys = [k * height // n for k in range(n + 1)]
        rows += [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(n) for i in range(n)]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


class BoxMaskStage:
    """``masks.source = "boxes"``: adds ``masks`` (each detector box as a mask) and
    ``mask_iou`` (1.0) to items that have ``boxes``."""

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            if not failed(item):
                item["masks"] = box_masks(item["boxes"], item["width"], item["height"])
                item["mask_iou"] = np.ones(len(item["masks"]), dtype=np.float32)
        return batch


class TileMaskStage:
    """``masks.source = "tiles"``: adds ``boxes`` (the 54 tiles), ``scores`` (1.0),
    ``masks`` and ``mask_iou`` (1.0); replaces both detector and SAM."""

    def __init__(self, grids: tuple[int, ...] = TILE_GRIDS) -> None:
        self.grids = grids

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            if failed(item):
                continue
            boxes = tile_boxes(item["width"], item["height"], self.grids)
            item["boxes"] = boxes
            item["scores"] = np.ones(len(boxes), dtype=np.float32)
            item["masks"] = box_masks(boxes, item["width"], item["height"])
            item["mask_iou"] = np.ones(len(boxes), dtype=np.float32)
        return batch
