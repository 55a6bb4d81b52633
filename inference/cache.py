"""The cache as generation reads it: checked against the checkpoint's token widths, and
whether an image id has tokens in it."""

from __future__ import annotations

from pathlib import Path

from ..schemas.errors import CacheError
from ..schemas.record import Status
from ..trainer.data.readers import ZarrImages
from ..trainer.visual.refilter import require_refilterable
from ..trainer.visual.token_spec import TokenSpec, require_patches


def open_cache(cache: Path, dims: dict[str, int], specs: list[TokenSpec]) -> ZarrImages:
    """The cache a checkpoint reads: CacheError if its widths differ from ``dims`` (those the
    projectors were built for); TokenSpecError if a spec re-filters objects it cannot, or asks
    for a patch count its grids do not pool to exactly."""
    images = ZarrImages(cache)
    if {k: images.dims[k] for k in ("C", "D")} != {k: dims[k] for k in ("C", "D")}:
        raise CacheError(f"the cache {cache} has widths {images.dims}, the checkpoint was trained on {dims}")
    if any(spec.iou is not None for spec in specs):
        require_refilterable(images.version, images.filter, cache)
    for spec in specs:
        require_patches(spec, images.patch_grid, cache)
    return images


def image_status(images: ZarrImages, image_id: str) -> str | None:
    """None when ``image_id`` has tokens in the cache, else why not (unknown, failed, pending)."""
    row = images.row_of(image_id)
    if row is None:
        return "not in the cache"
    if images.status[row] != Status.OK:
        return "failed" if images.status[row] == Status.FAILED else "not processed yet"
    return None
