"""Objects re-filtered at another IoU threshold, from the stored IoU matrix (record v2),
without recomputing any token: ``obj:20@iou0.5`` in a token spec.

The filter stage (stages/filter.py) ranks the object rows by greedy suppression in
confidence order, comparing float16 IoUs, the values the record stores as ``mask_iou``;
running the same greedy pass here over those values gives exactly the ``keep_rank`` the
stage would have produced at the new threshold. One fact is not stored: which masks are
empty (never kept at any threshold). It follows from the plan-time ``keep_rank``: a row
that was not kept is either empty or suppressed, and a suppressed row has an IoU above the
plan threshold (> 0) with a kept row, while an empty mask overlaps nothing.

Rows dropped at plan time (``filter.max_objects``) cannot come back, so a cache planned
with ``max_objects`` is refused, as is a version-1 cache (no ``mask_iou``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...schemas.errors import TokenSpecError
from ...schemas.record import from_triangle
from ...stages.filter import greedy_keep_rank


def refiltered_keep_rank(record: dict[str, Any], threshold: float) -> np.ndarray:
    """The record's ``keep_rank`` at IoU ``threshold`` (int16, background last)."""
    if "mask_iou" not in record:
        raise TokenSpecError(f"{record.get('image_id', 'this image')}: @iou needs the stored mask IoUs "
                             "(record version 2); this cache was written with version 1")
    keep = np.asarray(record["keep_rank"])
    n = len(keep)
    if n == 0:
        return keep.astype(np.int16)
    objects = from_triangle(np.asarray(record["mask_iou"]), n).astype(np.float64)[:-1, :-1]
    was_kept = keep[:-1] >= 0
    empty = ~was_kept & ~(objects[:, was_kept] > 0).any(axis=1)
    ranks = greedy_keep_rank(np.asarray(record["scores"])[:-1], objects, threshold, (~empty).astype(np.int64))
    background = keep[-1] if keep[-1] < 0 else (ranks >= 0).sum()  # never compared; -1 iff empty
    return np.append(ranks, np.int16(background)).astype(np.int16)


def require_refilterable(version: int, filter_settings: dict[str, Any], cache: object) -> None:
    """Refuse ``@iou`` on a cache that cannot be re-filtered exactly (see the module docstring)."""
    if version < 2:
        raise TokenSpecError(f"@iou needs the stored mask IoUs (record version 2): {cache} was written with "
                             f"version {version}; plan and run it again, or drop @iou")
    if filter_settings.get("max_objects") is not None:
        raise TokenSpecError(f"@iou cannot re-filter {cache}: its objects were cut to filter.max_objects="
                             f"{filter_settings['max_objects']} at plan time, so suppressed rows are gone")
