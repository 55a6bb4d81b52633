"""A small synthetic token cache written with the real writers (trainer tests, benchmarks).

``write_tiny_cache`` fills ``JOBDIR/tokens.zarr``, ``JOBDIR/wds/`` and the commits through
``write_shard`` (the function ``masktok run`` commits with), so the trainer's readers are
tested against the real on-disk format without running the models. It writes no
manifest: the trainer does not read it. Each image gets seeded random tokens, a
random number of objects (some suppressed, the background empty on every third image)
and one of a few captions tied to its "class", so a tiny model can learn the mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..schemas.jobdir import JobDir
from ..schemas.record import FINE_GRID, FINE_PATCH_ARRAY, POOLED_GRID, POOLED_PATCHES
from ..schemas.versions import RECORD_SCHEMA_VERSION
from ..stages.write import TokenDims, open_store
from ..pipeline.commit import write_shard

CAPTIONS = ("a red square on grass", "a blue circle in the sky", "two green boats on a lake")


def pooled_grid(grid: np.ndarray, side: int) -> np.ndarray:
    """[S, S, C] patch grid -> [side * side, C] raster order, average-pooled in float64 with
    windows of S/side (S divisible by side), as the invert stage pools the 24x24 grid."""
    s, c = grid.shape[0], grid.shape[-1]
    w = s // side
    return grid.astype(np.float64).reshape(side, w, side, w, c).mean(axis=(1, 3)).reshape(side * side, c)


def tiny_items(n: int, dims: TokenDims, failed: tuple[int, ...] = (), seed: int = 0,
               objects: int | None = None, patch_grid: int = POOLED_GRID) -> list[dict[str, Any]]:
    """Finished-item dicts as the invert stage hands them to the writer: ``objects`` rows
    each (background included), or a random number from 2 to K. With ``patch_grid`` 12 the
    patch tokens are pooled from a random 24x24 grid (its own seeded stream, so the other
    values are those of ``patch_grid`` 6): 4x4 to ``patch_tokens``, 2x2 to
    ``patch_tokens_144``; the grid itself is kept as ``patch_grid_24`` (tests), which the
    writer ignores."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        item: dict[str, Any] = {"index": i, "image_id": f"img/{i:03d}.jpg"}
        if i in failed:
            item["error"] = {"stage": "decode", "reason": "truncated file"}
            items.append(item)
            continue
        k = int(rng.integers(2, dims.K + 1)) if objects is None else objects  # objects incl. background
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 480))
        x0, y0 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
        boxes = np.stack([x0, y0, x0 + rng.uniform(5, w / 2, k), y0 + rng.uniform(5, h / 2, k)], 1)
        boxes[-1] = [0, 0, w, h]
        rank = np.full(k, -1, dtype=np.int16)
        kept = [j for j in range(k - 1) if rng.random() > 0.25]
        rank[kept] = np.arange(len(kept))
        if i % 3:
            rank[-1] = len(kept)  # non-empty background: the next rank
        cls = i % len(CAPTIONS)
        item.update(
            width=w, height=h, patch_norm_mean=float(rng.uniform(20, 40)), patch_norm_std=float(rng.uniform(2, 6)),
            object_tokens=(rng.normal(size=(k, dims.D)) + cls).astype(np.float16),
            boxes=boxes.astype(np.float32), scores=rng.uniform(0, 1, k).astype(np.float32),
            keep_rank=rank, inversion_loss=rng.uniform(0, 1, k).astype(np.float32),
            global_token=(rng.normal(size=dims.D) * 3 + cls).astype(np.float16),
            patch_tokens=(rng.normal(size=(POOLED_PATCHES, dims.C)) + cls).astype(np.float16),
            pairwise_iou=_symmetric_iou(np.random.default_rng([seed, i]), k),  # own stream: the rest unchanged
        )
        if patch_grid == FINE_GRID:
            full = np.random.default_rng([seed, i, 24]).normal(size=(24, 24, dims.C)) + cls
            item.update(patch_grid_24=full.astype(np.float32),
                        patch_tokens=pooled_grid(full, POOLED_GRID).astype(np.float16),
                        **{FINE_PATCH_ARRAY.name: pooled_grid(full, FINE_GRID).astype(np.float16)})
        items.append(item)
    return items


def _symmetric_iou(rng: np.random.Generator, k: int) -> np.ndarray:
    """A plausible float16 IoU matrix (symmetric, ones on the diagonal); not tied to keep_rank."""
    upper = np.triu(rng.uniform(0, 0.9, (k, k)), 1)
    return (upper + upper.T + np.eye(k)).astype(np.float16)


def write_tiny_cache(job_dir: Path, n: int = 12, shard_size: int = 4, dims: TokenDims = TokenDims(K=6, D=16, C=24),
                     failed: tuple[int, ...] = (5,), seed: int = 0, record_version: int | None = None,
                     patch_grid: int = POOLED_GRID) -> Path:
    """Write ``n`` images (``failed`` ones with status 2) into ``job_dir``; returns it.
    ``record_version`` 1 writes a store as masktok wrote them before ``mask_iou``;
    ``patch_grid`` 12 a store with the 12x12 patch grid too (``write.patch_grid = 12``)."""
    jd = JobDir(job_dir)
    items = tiny_items(n, dims, failed, seed, patch_grid=patch_grid)
    group = open_store(jd.tokens, n, shard_size, dims, record_version or RECORD_SCHEMA_VERSION,
                       patch_grid=patch_grid)
    for s, start in enumerate(range(0, n, shard_size)):
        end = min(start + shard_size, n)
        write_shard(jd, group, s, start, end, items[start:end], dims, "sha256:tiny-cache")
    return jd.root


def write_corpus(path: Path, n: int, extra: list[dict[str, Any]] | None = None) -> Path:
    """A LLaVA JSON naming the tiny cache's images: one caption conversation each (class
    i % 3), plus ``extra`` records (text-only, missing images, ...)."""
    records = [{"id": f"r{i}", "image": f"img/{i:03d}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image."},
        {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]}]} for i in range(n)]
    Path(path).write_text(json.dumps(records + list(extra or [])))
    return Path(path)
