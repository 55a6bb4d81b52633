"""Background stage: the pixels no object mask covers, appended as the last row.

Paper 4.2: OR all masks, then NOT. The background row is always appended, so the last row
of an item is always its background, whatever the masks cover:

* ``boxes`` row: the whole image ``[0, 0, W, H]``; ``scores`` row: 0; ``mask_iou`` row: 0.
* ``background_empty``: True when the object masks cover every pixel. The row still
  exists (fixed layout: background last); the filter gives an empty background
  ``keep_rank`` -1, the rule for every empty mask, so no consumer spends a token on it.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from .batch import Batch, decode_mask, encode_mask, failed


def background_mask(masks: list[dict], width: int, height: int) -> dict:
    """RLE of the pixels of a ``width`` x ``height`` image that no mask in ``masks`` covers."""
    if not masks:
        return encode_mask(np.ones((height, width), dtype=np.uint8))
    covered = decode_mask(mask_utils.merge(masks, intersect=False))
    return encode_mask(~covered)


class BackgroundStage:
    """Appends the background row to ``boxes``, ``scores``, ``masks``, ``mask_iou`` and sets
    ``background_empty``."""

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            if failed(item):
                continue
            width, height = item["width"], item["height"]
            background = background_mask(item["masks"], width, height)
            whole = np.array([[0, 0, width, height]], dtype=np.float32)
            item["boxes"] = np.concatenate([np.asarray(item["boxes"], np.float32).reshape(-1, 4), whole])
            item["scores"] = np.append(np.asarray(item["scores"], np.float32), np.float32(0))
            item["mask_iou"] = np.append(np.asarray(item["mask_iou"], np.float32), np.float32(0))
            item["masks"] = [*item["masks"], background]
            item["background_empty"] = bool(mask_utils.area(background) == 0)
        return batch
