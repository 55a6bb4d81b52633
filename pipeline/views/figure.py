"""The inspect picture as a PNG: plain image | overlay, then (with maps) one tile pair per object.

Rendered with matplotlib's Agg canvas directly (no pyplot, no global state). The images are
placed with ``figimage`` at exact pixel offsets, never resampled by matplotlib, so the plain
panel is the decoded image pixel for pixel and the overlay differs from it only where masks,
hatch, boxes and labels are. Boxes and labels are vector artists on a transparent axes laid
exactly over the overlay panel.

Shown: kept objects (``keep_rank >= 0``) with their mask filled in a colour per object, their
box, and a label ``rank · score``; suppressed objects only as a dashed grey box (so what the
filter removed stays visible without cluttering the picture; ``top`` hides them, and keeps
the first ``top`` kept objects); the background hatched. The PNG carries a ``masktok.layout``
text chunk (JSON: panel rectangles, scale, label extents, top-left pixel coordinates) so
tools and tests can find the panels.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from .overlay import compose_overlay, display_scale, map_tile, mask_tile, object_colours, scale_image, scale_masks

PAD = 12
TITLE = 58
TILE = 150
TILE_TITLE = 30
DPI = 100


@dataclass
class Scene:
    """What one picture shows (object arrays cut to num_objects, background last)."""

    title: str
    notes: list[str]
    image: np.ndarray | None  # uint8 RGB, original frame; None if it cannot be read
    boxes: np.ndarray
    scores: np.ndarray
    keep_rank: np.ndarray
    losses: np.ndarray
    masks: np.ndarray | None = None  # bool [K, H, W] or None (boxes only)
    maps: np.ndarray | None = None  # float [K, h, w] in [0, 1], original frame
    map_losses: np.ndarray | None = None  # recomputed dice loss per row
    failure: str | None = None


def kept_rows(keep_rank: np.ndarray, top: int | None = None) -> list[int]:
    """Object rows (background excluded) with keep_rank >= 0, in rank order, first ``top``."""
    objects = keep_rank[:-1]
    rows = sorted((int(r) for r in np.flatnonzero(objects >= 0)), key=lambda r: int(objects[r]))
    return rows[:top] if top is not None else rows


def render(scene: Scene, top: int | None = None) -> tuple[bytes, dict]:
    """PNG bytes of ``scene`` and its layout (also stored in the PNG's metadata)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if scene.image is None:
        fig = Figure(figsize=(800 / DPI, 64 / DPI), dpi=DPI)
        _title(fig, scene, 800, 64)
        return _save(fig, FigureCanvasAgg(fig), {"width": 800, "height": 64})
    h0, w0 = scene.image.shape[:2]
    scale = display_scale(w0, h0)
    plain = scale_image(scene.image, scale)
    dh, dw = plain.shape[:2]
    rows = kept_rows(scene.keep_rank, top) if len(scene.keep_rank) else []
    colours = object_colours(len(rows))
    overlay = plain
    if scene.masks is not None and len(scene.masks):
        background = len(scene.keep_rank) - 1
        overlay = compose_overlay(plain, scale_masks(scene.masks, scale), rows, colours, background)
    width = 2 * dw + 3 * PAD
    per_row = max(1, (width - PAD) // (2 * TILE + 3 * PAD))
    tile_rows = -(-len(rows) // per_row) if scene.maps is not None else 0
    height = TITLE + dh + PAD + tile_rows * (TILE_TITLE + TILE + PAD)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    _title(fig, scene, width, height)
    top_y = TITLE  # top-left pixel coordinates of the panels
    fig.figimage(plain, xo=PAD, yo=height - top_y - dh, origin="upper")
    fig.figimage(overlay, xo=2 * PAD + dw, yo=height - top_y - dh, origin="upper")
    ax = fig.add_axes((((2 * PAD + dw) / width), (height - top_y - dh) / height, dw / width, dh / height))
    ax.set_xlim(0, dw)
    ax.set_ylim(dh, 0)
    ax.axis("off")
    ax.patch.set_alpha(0.0)
    ax.set_zorder(2)  # above the figimages (zorder 0)
    texts = _draw_boxes(ax, scene, rows, colours, scale, show_suppressed=top is None)
    if scene.maps is not None:
        _draw_tiles(fig, scene, rows, colours, width, height, top_y + dh + PAD, per_row)
    layout = {"width": width, "height": height, "scale": scale,
              "plain": [PAD, top_y, dw, dh], "overlay": [2 * PAD + dw, top_y, dw, dh], "objects": rows,
              "tiles": len(rows) if scene.maps is not None else 0}
    canvas.draw()
    layout["labels"] = [_extent(t, canvas, height) for t in texts]
    return _save(fig, canvas, layout)


def _title(fig, scene: Scene, width: int, height: int) -> None:
    fig.text(PAD / width, 1 - 6 / height, scene.title, va="top", ha="left", fontsize=11, weight="bold")
    lines = list(scene.notes)
    if scene.failure:
        lines.insert(0, scene.failure)
    fig.text(PAD / width, 1 - 26 / height, "\n".join(lines[:2]), va="top", ha="left", fontsize=8,
             color="#b00020" if scene.failure else "#333333", linespacing=1.3)


def _draw_boxes(ax, scene: Scene, rows: list[int], colours: np.ndarray, scale: float, show_suppressed: bool) -> list:
    from matplotlib.patches import Rectangle

    texts = []
    objects = range(len(scene.keep_rank) - 1)
    if show_suppressed:
        for r in (r for r in objects if scene.keep_rank[r] < 0):
            x0, y0, x1, y1 = scene.boxes[r] * scale
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="#9e9e9e", lw=0.8, ls="--", alpha=0.7))
    for r, colour in zip(rows, colours):
        x0, y0, x1, y1 = scene.boxes[r] * scale
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=tuple(colour), lw=1.6))
        above = y0 > 14
        texts.append(ax.text(x0 + 1, y0 - 1 if above else y0 + 1, f"{int(scene.keep_rank[r])} · {scene.scores[r]:.2f}",
                             va="bottom" if above else "top", ha="left", fontsize=7, color="white", clip_on=True,
                             bbox={"boxstyle": "square,pad=0.15", "fc": tuple(colour), "ec": "none", "alpha": 0.9}))
    return texts


def _draw_tiles(fig, scene: Scene, rows: list[int], colours: np.ndarray, width: int, height: int, y: int,
                per_row: int) -> None:
    """Per kept object: its mask (image darkened outside it) beside its explainability map."""
    for n, (r, colour) in enumerate(zip(rows, colours)):
        col, line = n % per_row, n // per_row
        x = PAD + col * (2 * TILE + 3 * PAD)
        top = y + line * (TILE_TITLE + TILE + PAD)
        mask = scene.masks[r] if scene.masks is not None else _box_mask(scene, r)
        left, right = mask_tile(scene.image, mask, colour, TILE), map_tile(scene.image, scene.maps[r], TILE)
        fig.figimage(left, xo=x, yo=height - top - TILE_TITLE - left.shape[0], origin="upper")
        fig.figimage(right, xo=x + left.shape[1] + PAD, yo=height - top - TILE_TITLE - right.shape[0], origin="upper")
        recomputed = f" / {scene.map_losses[r]:.3f} now" if scene.map_losses is not None else ""
        fig.text(x / width, 1 - (top + 2) / height,
                 f"rank {int(scene.keep_rank[r])} · score {scene.scores[r]:.2f}\n"
                 f"mask | map   dice loss {scene.losses[r]:.3f} stored{recomputed}",
                 va="top", ha="left", fontsize=7, color=tuple(colour * 0.7), linespacing=1.2)


def _box_mask(scene: Scene, row: int) -> np.ndarray:
    h, w = scene.image.shape[:2]
    x0, y0, x1, y1 = np.rint(scene.boxes[row]).astype(int)
    mask = np.zeros((h, w), bool)
    mask[max(0, y0):y1, max(0, x0):x1] = True
    return mask


def _extent(text, canvas, height: int) -> list[int]:
    """A label's pixel rectangle (its coloured bbox included), top-left origin, figure frame."""
    box = text.get_bbox_patch().get_window_extent(canvas.get_renderer()) if text.get_bbox_patch() else \
        text.get_window_extent(canvas.get_renderer())
    return [int(np.floor(box.x0)), int(np.floor(height - box.y1)), int(np.ceil(box.x1)), int(np.ceil(height - box.y0))]


def _save(fig, canvas, layout: dict) -> tuple[bytes, dict]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"masktok.layout": json.dumps(layout), "Software": None})
    return buffer.getvalue(), layout
