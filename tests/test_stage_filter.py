"""Filter stage: exact mask IoU, greedy suppression in confidence order, keep_rank,
max_objects, background always last."""

from __future__ import annotations

import numpy as np
import pytest

import masktok.stages.filter as filter_module
from masktok.schemas.spec import FilterSpec
from masktok.stages.background import BackgroundStage
from masktok.stages.batch import encode_masks
from masktok.stages.filter import FilterStage, pairwise_mask_iou
from masktok.stages.masks import box_masks

W, H = 100, 100


def _item(boxes: list[list[float]], scores: list[float]) -> dict:
    boxes_arr = np.array(boxes, np.float32).reshape(-1, 4)
    item = {
        "index": 0, "image_id": "a", "path": "a", "width": W, "height": H,
        "boxes": boxes_arr, "scores": np.array(scores, np.float32),
        "masks": box_masks(boxes_arr, W, H), "mask_iou": np.ones(len(boxes_arr), np.float32),
    }
    return BackgroundStage()([item])[0]


def _filter(item: dict, threshold: float = 0.5, max_objects: int | None = None) -> dict:
    return FilterStage(FilterSpec(iou_threshold=threshold, max_objects=max_objects))([item])[0]


def test_two_overlapping_rectangles_give_the_exact_iou() -> None:
    masks = box_masks(np.array([[0, 0, 10, 10], [5, 5, 15, 15], [50, 50, 60, 70]]), W, H)
    iou = pairwise_mask_iou(masks)
    assert iou[0, 1] == iou[1, 0] == 25 / 175  # intersection 5x5, union 100 + 100 - 25
    assert iou[0, 2] == 0 and np.array_equal(np.diag(iou), [1, 1, 1])


def test_iou_matches_a_dense_reference_on_irregular_masks() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:61, :83]
    blobs = [((xx - rng.uniform(0, 83)) / rng.uniform(5, 40)) ** 2
             + ((yy - rng.uniform(0, 61)) / rng.uniform(5, 30)) ** 2 < 1 for _ in range(12)]
    masks = np.stack(blobs) ^ (rng.random((12, 61, 83)) < 0.05)  # speckled edges
    flat = masks.reshape(12, -1).astype(np.int64)
    inter = flat @ flat.T
    union = flat.sum(1)[:, None] + flat.sum(1)[None, :] - inter
    rles = encode_masks(masks)
    for method in ("rle", "dense", "auto"):
        assert np.allclose(pairwise_mask_iou(rles, method), inter / union, rtol=0, atol=1e-12)


def test_auto_picks_dense_for_ragged_masks_and_rle_for_smooth_ones(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    ragged = encode_masks(rng.random((20, 50, 60)) < 0.5)
    smooth = box_masks(np.array([[i, i, i + 30, i + 20] for i in range(20)]), 60, 50)
    assert np.array_equal(pairwise_mask_iou(encode_masks(np.zeros((2, 5, 6), bool)), "dense"),
                          np.zeros((2, 2)))  # empty unions give 0, as pycocotools does
    expected = {id(m): pairwise_mask_iou(m, "rle") for m in (ragged, smooth)}
    dense_calls = []
    original = filter_module._dense_iou
    monkeypatch.setattr(filter_module, "_dense_iou", lambda m: dense_calls.append(len(m)) or original(m))
    for masks in (ragged, smooth):
        assert np.array_equal(pairwise_mask_iou(masks, "auto"), expected[id(masks)])
    assert dense_calls == [20]  # only the ragged set went dense


def test_greedy_suppression_follows_confidence_not_row_order() -> None:
    # row 1 (0.9) is kept first; row 2 (0.7) overlaps it (IoU 0.6) and goes; row 3 (0.6)
    # overlaps only the suppressed row 2 (0.6) and row 1 weakly (1/3): kept; row 0 (0.5)
    # overlaps row 3 (IoU 360/440) and goes. Background: rank = number kept.
    item = _item(
        [[0, 12, 20, 32], [0, 0, 20, 20], [0, 5, 20, 25], [0, 10, 20, 30]], [0.5, 0.9, 0.7, 0.6]
    )
    out = _filter(item, threshold=0.5)
    assert out["keep_rank"].dtype == np.int16
    assert out["keep_rank"].tolist() == [-1, 0, -1, 1, 2]
    assert len(out["masks"]) == 5  # no max_objects: nothing dropped, rows in place


def test_threshold_is_strict() -> None:
    boxes = [[0, 0, 10, 10], [0, 0, 10, 20]]  # IoU exactly 100 / 200
    assert _filter(_item(boxes, [0.9, 0.8]), threshold=0.5)["keep_rank"].tolist() == [0, 1, 2]
    assert _filter(_item(boxes, [0.9, 0.8]), threshold=0.49)["keep_rank"].tolist() == [0, -1, 1]
    same = [[0, 0, 10, 10], [0, 0, 10, 10]]
    assert _filter(_item(same, [0.9, 0.8]), threshold=1.0)["keep_rank"].tolist() == [0, 1, 2]


def test_equal_scores_rank_in_row_order() -> None:
    out = _filter(_item([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.5, 0.5]))
    assert out["keep_rank"].tolist() == [0, 1, 2, 3]


def test_empty_masks_are_never_kept_and_suppress_nothing() -> None:
    out = _filter(_item([[0, 0, 10, 10], [3, 3, 3.2, 9], [0, 0, 10, 11]], [0.5, 0.9, 0.4]))
    assert out["keep_rank"].tolist() == [0, -1, -1, 1]


def test_max_objects_drops_rows_and_keeps_background_last() -> None:
    boxes = [[0, 12, 20, 32], [0, 0, 20, 20], [0, 5, 20, 25], [0, 10, 20, 30], [60, 60, 80, 80]]
    scores = [0.5, 0.9, 0.7, 0.6, 0.3]
    item = _item(boxes, scores)
    original = [dict(m) for m in item["masks"]]
    out = _filter(item, threshold=0.5, max_objects=2)
    # kept in rank order: row 1 (rank 0), row 3 (rank 1); row 4 (rank 2) is over the cap
    assert out["boxes"].tolist() == [boxes[1], boxes[3], [0, 0, W, H]]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.6, 0.0])
    assert out["masks"] == [original[1], original[3], original[5]]
    assert out["keep_rank"].tolist() == [0, 1, 2]
    assert len(out["mask_iou"]) == 3
    everything = _filter(_item(boxes, scores), threshold=0.5, max_objects=50)
    assert everything["keep_rank"].tolist() == [0, 1, 2, 3]  # suppressed rows dropped too
    assert everything["boxes"][:3].tolist() == [boxes[1], boxes[3], boxes[4]]


def test_empty_background_stays_last_with_rank_minus_one() -> None:
    out = _filter(_item([[0, 0, W, H], [0, 0, 50, 50]], [0.3, 0.8]), max_objects=5)
    assert out["background_empty"] is True
    assert out["keep_rank"].tolist() == [0, 1, -1]
    assert out["boxes"][-1].tolist() == [0, 0, W, H]


def test_filter_refuses_items_without_background() -> None:
    item = {"width": 4, "height": 4, "masks": [], "scores": np.zeros(0), "boxes": np.zeros((0, 4))}
    with pytest.raises(ValueError, match="BackgroundStage"):
        FilterStage(FilterSpec())([item])
