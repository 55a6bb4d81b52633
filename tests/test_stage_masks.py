"""Mask sources without SAM (paper Table 2): box-shaped masks and the 54 tiles."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from masktok.schemas.spec import FilterSpec
from masktok.stages.background import BackgroundStage
from masktok.stages.batch import decode_mask, decode_masks, encode_masks, rle_to_json
from masktok.stages.filter import FilterStage
from masktok.stages.masks import BoxMaskStage, TileMaskStage, box_masks, tile_boxes


def _item(width: int, height: int, **extra) -> dict:
    return {"index": 0, "image_id": "x", "path": "x", "width": width, "height": height, **extra}


def test_rle_codec_round_trips_through_json() -> None:
    """One decoder for the stages' RLEs (counts bytes) and masks.json's (counts str)."""
    masks = np.random.default_rng(0).random((3, 7, 5)) > 0.5
    rles = encode_masks(masks)
    assert np.array_equal(decode_masks(rles), masks)
    assert np.array_equal(decode_masks([rle_to_json(r) for r in rles], size=(7, 5)), masks)
    assert decode_masks([], size=(7, 5)).shape == (0, 7, 5) and decode_masks([]).shape == (0, 0, 0)
    with pytest.raises(ValueError, match="differs from image size"):
        decode_masks(rles, size=(5, 7))


def test_integer_box_covers_exactly_its_pixels() -> None:
    (rle,) = box_masks(np.array([[3, 2, 7, 5]], np.float32), width=10, height=8)
    expected = np.zeros((8, 10), bool)
    expected[2:5, 3:7] = True
    assert rle["size"] == [8, 10]
    assert np.array_equal(decode_mask(rle), expected)


def test_fractional_box_takes_pixels_whose_centres_are_inside() -> None:
    (rle,) = box_masks(np.array([[0.4, 0.6, 2.5, 3.5]]), width=5, height=5)
    expected = np.zeros((5, 5), bool)
    expected[1:3, 0:2] = True  # column centres 0.5, 1.5 (2.5 is the open end); rows 1.5, 2.5
    assert np.array_equal(decode_mask(rle), expected)


def test_boxes_are_clipped_and_degenerate_boxes_are_empty() -> None:
    out, thin = box_masks(np.array([[-5, -5, 100, 3], [2, 2, 2.4, 6]]), width=6, height=4)
    assert np.array_equal(decode_mask(out), np.arange(4)[:, None].repeat(6, 1) < 3)
    assert mask_utils.area(thin) == 0


def test_box_mask_stage_adds_one_mask_per_box() -> None:
    boxes = np.array([[0, 0, 4, 4], [2, 1, 6, 3]], np.float32)
    (item,) = BoxMaskStage()([_item(6, 5, boxes=boxes, scores=np.array([0.9, 0.8], np.float32))])
    assert [mask_utils.area(m) for m in item["masks"]] == [16, 8]
    assert item["mask_iou"].dtype == np.float32 and (item["mask_iou"] == 1).all()


@pytest.mark.parametrize(("width", "height"), [(101, 37), (640, 480), (7, 5)])
def test_tiles_partition_the_image_grid_by_grid(width: int, height: int) -> None:
    (item,) = TileMaskStage()([_item(width, height)])
    assert len(item["masks"]) == len(item["boxes"]) == len(item["scores"]) == 54
    masks = np.stack([decode_mask(m) for m in item["masks"]])
    start = 0
    for n in (2, 3, 4, 5):
        grid = masks[start : start + n * n]
        assert np.array_equal(grid.sum(axis=0), np.ones((height, width)))  # each pixel once
        for mask, box in zip(grid, item["boxes"][start : start + n * n]):
            x0, y0, x1, y1 = box.astype(int)
            assert mask.sum() == (x1 - x0) * (y1 - y0)  # the mask is exactly its box
            assert mask[y0:y1, x0:x1].all()
            assert abs((x1 - x0) - width / n) < 1 and abs((y1 - y0) - height / n) < 1
        start += n * n
    assert (item["scores"] == 1).all() and (item["mask_iou"] == 1).all()


def test_tile_order_is_coarse_first_row_major() -> None:
    boxes = tile_boxes(100, 60)
    assert boxes[:4].tolist() == [[0, 0, 50, 30], [50, 0, 100, 30], [0, 30, 50, 60], [50, 30, 100, 60]]
    assert boxes[4].tolist() == [0, 0, 33, 20]


def test_tiles_through_background_and_filter() -> None:
    item = _item(90, 60)
    batch = FilterStage(FilterSpec())(BackgroundStage()(TileMaskStage()([item])))
    assert item["background_empty"] is True  # the tiles cover everything
    assert item["keep_rank"].tolist() == [*range(54), -1]  # no two tiles overlap by > 0.8
    capped = FilterStage(FilterSpec(max_objects=4))(BackgroundStage()(TileMaskStage()([_item(90, 60)])))
    assert capped[0]["boxes"][:4].tolist() == tile_boxes(90, 60)[:4].tolist()  # the 2x2 grid
    assert len(capped[0]["masks"]) == 5 and batch[0] is item
