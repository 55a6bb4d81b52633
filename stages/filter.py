"""Filter stage: IoU/confidence ranking of the object masks (paper 3.5, "Mask token pruning").

Rules, applied to the object rows (all rows but the last, the background):

1. Pairwise mask IoU is computed **exactly**; no reduced grid. Two exact methods, the
   cheaper one picked per image from the masks' run counts: pycocotools on the RLEs (cost
   ~ masks x runs: 100 smooth masks take ~10 ms at 640x480, ~25 ms at 2000x1500 on one
   core) or a dense 0/1 matrix product (cost ~ masks^2 x pixels, whatever the shapes:
   ~80 ms and ~0.8 s), which wins for ragged masks with many runs (the tiny random SAM's;
   see benchmarks/bench_stages.py) while its decoded masks stay under ``DENSE_IOU_BYTES``. The product runs in float32 while a mask has fewer
   than 2^24 pixels (counts are exact integers there) and in float64 beyond.
2. Rows are visited by descending detector score, ties in row order (stable). A row is
   suppressed when its IoU with an already kept row is **strictly greater** than
   ``filter.iou_threshold`` (torchvision's NMS convention, so ``iou_threshold = 1.0``
   suppresses nothing); a row with an empty mask is never kept. Kept rows get
   ``keep_rank`` 0, 1, 2, ... in visiting order; suppressed ones get -1. IoUs are compared
   as float16, the precision the record stores them in (``mask_iou``, steps of 2^-11 near
   1), so re-filtering the stored matrix at this threshold gives exactly this
   ``keep_rank`` (trainer/visual/refilter.py).
3. The background is never compared and never suppressed: it is kept last, with
   ``keep_rank`` = number of kept objects, unless it is empty (``background_empty``), when
   it gets -1 like every empty mask. It stays the last row either way.
   The IoU matrix of all rows, background included, is kept as ``pairwise_iou`` (float16
   ``[M+1, M+1]``; the writer stores its upper triangle as the record's ``mask_iou``).
4. ``filter.max_objects`` (counting objects, not the background), when set, drops rows:
   an item keeps exactly its kept objects with ``keep_rank < max_objects``, reordered by
   ``keep_rank``, then the background row. Suppressed rows go too, so afterwards
   ``keep_rank`` is ``0..n-1`` and the background's is ``n`` (or -1 if empty), and an item
   has at most ``max_objects + 1`` rows. When unset, no row is dropped and rows keep
   the producer's order (detector score order; tiles in grid order).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from ..schemas.spec import FilterSpec
from .batch import Batch, Item, decode_masks, failed, take_rows


#: Measured on one core: one RLE run-pair step costs about this many dense multiply-adds.
_RLE_STEP_IN_MACS = 70.0
#: The dense method decodes every mask; above this many bytes (101 masks of ~1 megapixel)
#: RLE is used whatever its cost, so a large photo's IoUs never hold gigabytes.
DENSE_IOU_BYTES = 512 * 2**20


def _dense_iou(masks: list[dict]) -> np.ndarray:
    height, width = masks[0]["size"]
    dtype = np.float32 if height * width < 2**24 else np.float64  # 0/1 products: exact integer sums
    flat = decode_masks(masks).reshape(len(masks), -1).astype(dtype)
    inter = (flat @ flat.T).astype(np.float64)
    areas = np.diag(inter)
    union = areas[:, None] + areas[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pairwise_mask_iou(masks: list[dict], method: str = "auto") -> np.ndarray:
    """Exact IoU matrix (float64 ``[M, M]``) of M same-size RLE masks; 0 where the union is
    empty. ``method``: "rle" (pycocotools), "dense" (matrix product) or "auto" (cheaper)."""
    if not masks:
        return np.zeros((0, 0), dtype=np.float64)
    if method == "auto":
        runs = sum(len(m["counts"]) for m in masks) / 2  # ~2 characters per compressed run
        height, width = masks[0]["size"]
        dense_bytes = len(masks) * height * width * 5  # the bool masks and their float32 copy
        cheaper = runs * _RLE_STEP_IN_MACS >= len(masks) * height * width
        method = "dense" if cheaper and dense_bytes <= DENSE_IOU_BYTES else "rle"
    if method == "dense":
        return _dense_iou(masks)
    return np.asarray(mask_utils.iou(masks, masks, [0] * len(masks)), dtype=np.float64)


def greedy_keep_rank(
    scores: np.ndarray, iou: np.ndarray, iou_threshold: float, areas: np.ndarray
) -> np.ndarray:
    """``keep_rank`` (int16 [M]) by greedy suppression in confidence order (rule 2 above);
    ``iou`` is compared with the threshold in float64 (a float16 matrix is upcast exactly)."""
    iou = np.asarray(iou, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    rank = np.full(len(order), -1, dtype=np.int16)
    kept: list[int] = []
    for row in order:
        if areas[row] == 0:
            continue
        if kept and iou[row, kept].max() > iou_threshold:
            continue
        rank[row] = len(kept)
        kept.append(int(row))
    return rank


class FilterStage:
    """Adds ``keep_rank`` (int16, one per row incl. background) and ``pairwise_iou``; drops
    rows only when ``max_objects`` is set (rule 4 above). Needs the background row (run after
    :class:`~masktok.stages.background.BackgroundStage`)."""

    def __init__(self, spec: FilterSpec) -> None:
        self.iou_threshold = spec.iou_threshold
        self.max_objects = spec.max_objects

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            if not failed(item):
                self._filter(item)
        return batch

    def _filter(self, item: Item) -> None:
        if "background_empty" not in item:
            raise ValueError("FilterStage needs the background row: run BackgroundStage first")
        masks = item["masks"]
        iou = pairwise_mask_iou(masks).astype(np.float16)  # as stored: the decisions are reproducible
        objects = masks[:-1]
        areas = mask_utils.area(objects) if objects else np.zeros(0)
        ranks = greedy_keep_rank(item["scores"][:-1], iou[:-1, :-1], self.iou_threshold, areas)
        kept = int((ranks >= 0).sum())
        background = -1 if item["background_empty"] else kept
        item["keep_rank"] = np.append(ranks, np.int16(background)).astype(np.int16)
        item["pairwise_iou"] = iou
        if self.max_objects is None:
            return
        ranked = [int(r) for r in np.argsort(ranks, kind="stable") if 0 <= ranks[r] < self.max_objects]
        take_rows(item, [*ranked, len(ranks)])
        if not item["background_empty"]:
            item["keep_rank"][-1] = len(ranked)
