"""Segment stage: one embedding per image, all boxes in one prompt, single-mask output at
original resolution as RLE, equal to SamPredictor box by box, batch-independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from masktok.models import load_model
from masktok.models.sam import build_tiny_sam
from masktok.stages.batch import decode_mask
from masktok.stages.segment import SegmentStage

SIZES = [(160, 96), (90, 130), (300, 41)]  # (width, height)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _items() -> list[dict]:
    rng = np.random.default_rng(2)
    items = []
    for i, (w, h) in enumerate(SIZES):
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        x0, y0 = rng.uniform(0, w / 2, 5), rng.uniform(0, h / 2, 5)
        boxes = np.stack([x0, y0, x0 + rng.uniform(3, w / 2, 5), y0 + rng.uniform(3, h / 2, 5)], 1)
        items.append({"index": i, "image_id": f"{i}", "path": f"{i}", "image": image, "width": w,
                      "height": h, "boxes": boxes.astype(np.float32),
                      "scores": np.linspace(1, 0.5, 5).astype(np.float32)})
    return items


@pytest.fixture(scope="module")
def stage(tiny_checkpoints) -> SegmentStage:
    sam = load_model("sam", tiny_checkpoints["sam"], variant="tiny", device="cpu")
    return SegmentStage(sam, upsample_chunk=2)  # chunks of 2: 5 boxes -> 3 chunks


def test_masks_equal_sam_predictor_box_by_box(stage) -> None:
    (item,) = stage(_items()[:1])
    assert len(item["masks"]) == 5 and item["mask_iou"].shape == (5,)
    assert item["mask_iou"].dtype == np.float32
    predictor = SamPredictor(build_tiny_sam(seed=0))
    predictor.set_image(item["image"])
    for box, rle, iou in zip(item["boxes"], item["masks"], item["mask_iou"]):
        masks, scores, _ = predictor.predict(box=box, multimask_output=False)
        assert rle["size"] == [96, 160]  # original resolution
        assert np.array_equal(decode_mask(rle), masks[0])
        assert iou == pytest.approx(scores[0], abs=1e-5)


def test_mixed_sizes_in_one_batch_equal_one_at_a_time(stage) -> None:
    together = stage(_items())
    for item, single in zip(together, _items()):
        (alone,) = stage([single])
        assert item["masks"][0]["size"] == [item["height"], item["width"]]
        assert item["masks"] == alone["masks"]
        assert np.array_equal(item["mask_iou"], alone["mask_iou"])


def test_loaded_preset_gives_identical_stage_outputs(stage) -> None:
    in_memory = SegmentStage(build_tiny_sam(seed=0), upsample_chunk=16)
    for loaded, memory in zip(stage(_items()), in_memory(_items())):
        assert loaded["masks"] == memory["masks"]
        assert np.array_equal(loaded["mask_iou"], memory["mask_iou"])


def test_no_boxes_and_failed_items(stage) -> None:
    empty = _items()[0]
    empty["boxes"] = np.zeros((0, 4), np.float32)
    failed = {"index": 9, "image_id": "b", "path": "b", "error": {"stage": "decode", "reason": "x"}}
    out = stage([empty, dict(failed)])
    assert out[0]["masks"] == [] and out[0]["mask_iou"].shape == (0,)
    assert out[1] == failed
