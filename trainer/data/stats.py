"""Cache-wide norm statistics for the ``dataset-global`` and ``c7`` scaling modes.

Computed from ``tokens.zarr`` chunk by chunk (one decoded chunk at a time), over the ok
images only and, for object tokens, only the rows worth a token (keep_rank >= 0 within
num_objects). The patch statistics pool the per-image stats exactly (every image has 576
patches): mean = mean of the means, var = mean(std^2 + mean^2) - mean^2. For a very large
cache, ``max_images`` reads evenly spaced chunks until that many rows were seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...schemas.errors import CacheError
from ...schemas.record import Status
from ...schemas.storage import open_zarr
from ..visual.scaling import CacheStats
from .readers import zarr_path


def _mean_std(total: float, total_sq: float, count: int) -> tuple[float, float]:
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def cache_stats(job_dir: Path, max_images: int | None = 50_000) -> CacheStats:
    """Norm statistics over the ok images of ``job_dir``'s cache (see the module docstring)."""
    g = open_zarr(zarr_path(job_dir), mode="r")
    n = g["status"].shape[0]
    rows = int(g["status"].chunks[0])
    chunks = list(range((n + rows - 1) // rows))
    if max_images is not None and len(chunks) * rows > max_images:
        want = max(1, max_images // rows)
        chunks = sorted(set(np.linspace(0, len(chunks) - 1, want).round().astype(int).tolist()))
    sums = np.zeros(6)  # patch mean, patch sq, global, global sq, object, object sq
    images = objects = 0
    for c in chunks:
        sl = slice(c * rows, min((c + 1) * rows, n))
        ok = np.asarray(g["status"][sl]) == Status.OK
        if not ok.any():
            continue
        mu = np.asarray(g["patch_norm_mean"][sl], dtype=np.float64)[ok]
        sd = np.asarray(g["patch_norm_std"][sl], dtype=np.float64)[ok]
        gn = np.linalg.norm(np.asarray(g["global_token"][sl], dtype=np.float64)[ok], axis=-1)
        tokens = np.asarray(g["object_tokens"][sl], dtype=np.float64)[ok]
        rank = np.asarray(g["keep_rank"][sl])[ok]
        valid = np.arange(rank.shape[1])[None, :] < np.asarray(g["num_objects"][sl])[ok][:, None]
        on = np.linalg.norm(tokens, axis=-1)[(rank >= 0) & valid]
        sums += [mu.sum(), (sd ** 2 + mu ** 2).sum(), gn.sum(), (gn ** 2).sum(), on.sum(), (on ** 2).sum()]
        images += int(ok.sum())
        objects += on.size
    if images == 0:
        raise CacheError(f"{job_dir}: no ok image in the cache, nothing to compute statistics from")
    pm, ps = _mean_std(sums[0], sums[1], images)
    gm, gs = _mean_std(sums[2], sums[3], images)
    om, os_ = _mean_std(sums[4], sums[5], objects) if objects else (gm, gs)
    return CacheStats(patch_norm_mean=pm, patch_norm_std=ps, global_norm_mean=gm, global_norm_std=gs,
                      object_norm_mean=om, object_norm_std=os_, images=images)
