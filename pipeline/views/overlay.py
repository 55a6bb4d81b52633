"""Pixel work of the inspect picture: scaling, object colours, the mask overlay, map tiles.

Everything here is plain numpy on uint8 RGB arrays, so the picture's pixels are exact and
testable: outside every drawn mask and off the background hatch, the overlay *is* the image.

Decisions:

* Display size: images whose long side is under :data:`MIN_SIDE` are enlarged by an integer
  factor with nearest-neighbour (every source pixel becomes an exact s x s block, so masks
  stay crisp and boxes land on pixel edges); images over :data:`MAX_SIDE` are reduced
  (Lanczos for the image, nearest for masks). The scale is in the PNG's layout metadata.
* Kept objects are filled with their colour at :data:`FILL_ALPHA`, highest rank painted
  last so rank 0 is on top where masks overlap. Suppressed objects get no fill (the figure
  outlines their boxes, dashed and grey). The background mask (pixels no object covers) is
  hatched: thin diagonal light lines, so the image stays readable through it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_SIDE = 384
MAX_SIDE = 1024
FILL_ALPHA = 0.45
HATCH_SPACING = 10  # display pixels between hatch lines
HATCH_WIDTH = 2
HATCH_COLOUR = np.array([255, 255, 255], np.float32)
HATCH_ALPHA = 0.55


def display_scale(width: int, height: int) -> float:
    """Factor from original pixels to display pixels (an integer when enlarging)."""
    side = max(width, height)
    if side < MIN_SIDE:
        return float(-(-MIN_SIDE // side))
    if side > MAX_SIDE:
        return MAX_SIDE / side
    return 1.0


def display_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 RGB [H, W, 3] at display size (exact pixel blocks when enlarging)."""
    if scale == 1.0:
        return image
    if scale > 1 and scale.is_integer():
        s = int(scale)
        return image.repeat(s, axis=0).repeat(s, axis=1)
    w, h = display_size(image.shape[1], image.shape[0], scale)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.LANCZOS))


def scale_masks(masks: np.ndarray, scale: float) -> np.ndarray:
    """bool [K, H, W] at display size (nearest neighbour)."""
    if scale == 1.0 or len(masks) == 0:
        return masks
    if scale > 1 and scale.is_integer():
        s = int(scale)
        return masks.repeat(s, axis=1).repeat(s, axis=2)
    w, h = display_size(masks.shape[2], masks.shape[1], scale)
    return np.stack([np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST)) for m in masks])


def object_colours(count: int) -> np.ndarray:
    """Distinct RGB colours in [0, 1] for ``count`` objects, by keep_rank (tab10, then tab20)."""
    from matplotlib import colormaps

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    colours = [tab10(i % 10)[:3] if i < 10 else tab20(i % 20)[:3] for i in range(count)]
    return np.array(colours, np.float32).reshape(count, 3)


def hatch_lines(height: int, width: int) -> np.ndarray:
    """bool [H, W]: the diagonal hatch lines in display pixels."""
    y, x = np.mgrid[0:height, 0:width]
    return (x + y) % HATCH_SPACING < HATCH_WIDTH


def compose_overlay(image: np.ndarray, masks: np.ndarray, kept_rows: list[int], colours: np.ndarray,
                    background_row: int | None) -> np.ndarray:
    """The display-size image with kept masks filled and the background hatched.

    ``masks`` bool [K, H, W] at display size; ``kept_rows`` are the object rows to fill in
    keep_rank order (their colours in ``colours``, same order); ``background_row`` the row
    of the background mask, or None to leave the background plain.
    """
    out = image.astype(np.float32)
    for row, colour in reversed(list(zip(kept_rows, colours))):
        m = masks[row]
        out[m] = (1 - FILL_ALPHA) * out[m] + FILL_ALPHA * 255 * colour
    if background_row is not None:
        m = masks[background_row] & hatch_lines(*image.shape[:2])
        out[m] = (1 - HATCH_ALPHA) * out[m] + HATCH_ALPHA * HATCH_COLOUR
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def fit_tile(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (uint8 RGB or float [H, W]) resized so its long side is ``side``."""
    h, w = image.shape[:2]
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return np.asarray(Image.fromarray(image.astype(np.float32), "F").resize(size, Image.BILINEAR))


def mask_tile(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, side: int) -> np.ndarray:
    """The image with everything outside ``mask`` darkened and the mask tinted."""
    out = image.astype(np.float32)
    out[~mask] *= 0.3
    out[mask] = 0.7 * out[mask] + 0.3 * 255 * colour
    return fit_tile(np.clip(np.rint(out), 0, 255).astype(np.uint8), side)


def map_tile(image: np.ndarray, heat: np.ndarray, side: int) -> np.ndarray:
    """A [0, 1] explainability map (original frame, any size) as an inferno heatmap over
    the greyed image, ``side`` pixels on its long side."""
    from matplotlib import colormaps

    base = fit_tile(image, side)
    heat = np.clip(fit_tile(heat, side), 0.0, 1.0)
    heat = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize(base.shape[1::-1], Image.BILINEAR))
    coloured = colormaps["inferno"](heat)[..., :3] * 255
    grey = base.astype(np.float32).mean(axis=2, keepdims=True)
    return np.clip(np.rint(0.35 * grey + 0.65 * coloured), 0, 255).astype(np.uint8)
