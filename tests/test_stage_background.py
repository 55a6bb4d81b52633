"""Background stage: the exact complement of the union of the masks, appended last."""

from __future__ import annotations

import numpy as np

from masktok.stages.background import BackgroundStage
from masktok.stages.batch import decode_mask, encode_masks


def _item(masks: np.ndarray, width: int, height: int) -> dict:
    m = len(masks)
    return {
        "index": 3, "image_id": "a.jpg", "path": "a.jpg", "width": width, "height": height,
        "boxes": np.zeros((m, 4), np.float32), "scores": np.linspace(0.9, 0.5, m).astype(np.float32),
        "masks": encode_masks(masks), "mask_iou": np.full(m, 0.7, np.float32),
    }


def test_background_is_the_exact_complement_of_the_union() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 53)) < 0.15
    (item,) = BackgroundStage()([_item(masks, 53, 37)])
    background = decode_mask(item["masks"][-1])
    assert np.array_equal(background, ~masks.any(axis=0))
    assert len(item["masks"]) == len(item["boxes"]) == len(item["scores"]) == len(item["mask_iou"]) == 6
    assert item["boxes"][-1].tolist() == [0, 0, 53, 37]
    assert item["scores"][-1] == 0 and item["mask_iou"][-1] == 0
    assert item["scores"].dtype == item["mask_iou"].dtype == item["boxes"].dtype == np.float32
    assert item["background_empty"] is False
    assert np.array_equal(decode_mask(item["masks"][0]), masks[0])  # objects untouched


def test_fully_covered_image_keeps_a_flagged_empty_background_row() -> None:
    halves = np.zeros((2, 10, 20), bool)
    halves[0, :, :12] = True
    halves[1, :, 8:] = True
    (item,) = BackgroundStage()([_item(halves, 20, 10)])
    assert item["background_empty"] is True
    assert len(item["masks"]) == 3 and not decode_mask(item["masks"][-1]).any()


def test_no_objects_gives_the_whole_image() -> None:
    (item,) = BackgroundStage()([_item(np.zeros((0, 6, 4), bool), 4, 6)])
    assert decode_mask(item["masks"][0]).all() and item["boxes"].shape == (1, 4)
    assert item["background_empty"] is False
