"""Segment stage: the images of a batch share image-encoder forwards, all boxes of an image
go in one prompt, single-mask output at original resolution as RLE. Alone, an image's masks
equal SamPredictor's box by box; in a batch they equal them up to rounding (masks may differ
only at pixels whose logit is within rounding of the threshold)."""

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


#: Different sizes, hence different resized input sizes (192x256, 256x128, 256x256) and crops.
BATCH_SIZES = [(64, 48), (40, 80), (50, 50)]  # (width, height)
#: A batched and a single-image forward differ only by float rounding (observed: embeddings
#: ~2e-6 apart at magnitudes ~3.5, IoUs ~2e-8), so their logits differ by far less than this.
MARGIN = 1e-4


def _batch_items() -> list[dict]:
    rng = np.random.default_rng(5)
    items = []
    for i, (w, h) in enumerate(BATCH_SIZES):
        x0, y0 = rng.uniform(0, w / 2, 6), rng.uniform(0, h / 2, 6)
        boxes = np.stack([x0, y0, x0 + rng.uniform(5, w / 2, 6), y0 + rng.uniform(5, h / 2, 6)], 1)
        items.append({"index": i, "image_id": f"{i}", "path": f"{i}", "width": w, "height": h,
                      "image": (rng.random((h, w, 3)) * 255).astype(np.uint8),
                      "boxes": boxes.astype(np.float32), "scores": np.linspace(1, 0.5, 6).astype(np.float32)})
    return items


def _single_image_reference(item: dict) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """SamPredictor on ``item`` alone: embedding [C, h, w], logits [M, H, W], IoUs [M]."""
    predictor = SamPredictor(build_tiny_sam(seed=0))
    predictor.set_image(item["image"])
    boxes = predictor.transform.apply_boxes_torch(torch.as_tensor(item["boxes"]), predictor.original_size)
    logits, iou, _ = predictor.predict_torch(None, None, boxes, multimask_output=False, return_logits=True)
    return predictor.features[0], logits[:, 0].numpy(), iou[:, 0].numpy()


def _differing(rles: list[dict], logits: np.ndarray) -> tuple[int, int]:
    """(pixels where the masks differ from ``logits > 0``, those of them off the margin band)."""
    differ = np.stack([decode_mask(rle) for rle in rles]) != (logits > 0)
    return int(differ.sum()), int((differ & (np.abs(logits) >= MARGIN)).sum())


def test_batched_equals_one_image_at_a_time(stage) -> None:
    forwards: list[torch.Tensor] = []
    hook = stage.sam.image_encoder.register_forward_hook(lambda m, args, out: forwards.append(out))
    try:
        together = stage(_batch_items())
    finally:
        hook.remove()
    assert [len(f) for f in forwards] == [3]  # one shared forward for the 3 images
    for i, (item, single) in enumerate(zip(together, _batch_items())):
        embedding, logits, iou = _single_image_reference(single)
        (alone,) = stage([single])
        assert "error" not in item and len(item["masks"]) == 6
        assert item["masks"][0]["size"] == [item["height"], item["width"]]
        assert _differing(alone["masks"], logits) == (0, 0)  # alone: exactly SamPredictor
        # Batched: other matmul shapes, other rounding; only near-threshold pixels may flip.
        assert torch.allclose(forwards[0][i], embedding, rtol=0, atol=1e-5)
        np.testing.assert_allclose(item["mask_iou"], iou, rtol=0, atol=1e-5)
        n_differ, off_band = _differing(item["masks"], logits)
        assert off_band == 0 and n_differ <= 0.001 * logits.size
        # The check has teeth: the band is thin, and the wrong embedding or the wrong
        # input size (another image's crop) flips many pixels outside it.
        assert (np.abs(logits) < MARGIN).mean() < 0.01 and 0.1 < (logits > 0).mean() < 0.9
        size = stage.preprocess(stage._pixels(single))[1]
        other = (i + 1) % 3
        other_size = stage.preprocess(stage._pixels(_batch_items()[other]))[1]
        for emb, input_size in [(forwards[0][other], size), (forwards[0][i], other_size)]:
            wrong, _ = stage.segment(emb[None], input_size, single["image"].shape[:2], single["boxes"])
            assert _differing(wrong, logits)[1] > 0.01 * logits.size


def test_loaded_preset_gives_identical_stage_outputs(stage) -> None:
    in_memory = SegmentStage(build_tiny_sam(seed=0), upsample_chunk=16)
    for loaded, memory in zip(stage(_items()), in_memory(_items())):
        assert loaded["masks"] == memory["masks"]
        assert np.array_equal(loaded["mask_iou"], memory["mask_iou"])


def test_no_boxes_and_failed_items(stage) -> None:
    first, empty, last = _batch_items()
    empty["boxes"] = np.zeros((0, 4), np.float32)
    failed = {"index": 9, "image_id": "b", "path": "b", "error": {"stage": "decode", "reason": "x"}}
    rgba = dict(_batch_items()[0], image=np.zeros((48, 64, 4), np.uint8))  # cannot be normalised
    forwards: list[int] = []
    hook = stage.sam.image_encoder.register_forward_pre_hook(lambda m, args: forwards.append(len(args[0])))
    try:
        out = stage([first, empty, dict(failed), rgba, last])
    finally:
        hook.remove()
    assert forwards == [2]  # only the two good images with boxes reach the encoder
    assert out[1]["masks"] == [] and out[1]["mask_iou"].shape == (0,)
    assert out[1]["mask_iou"].dtype == np.float32 and "error" not in out[1]
    assert out[2] == failed
    assert out[3]["error"]["stage"] == "segment" and "masks" not in out[3]
    reference = stage([_batch_items()[0], _batch_items()[2]])  # the same two in one forward
    for got, want in zip([out[0], out[4]], reference):
        assert "error" not in got and got["masks"] == want["masks"]
        assert np.array_equal(got["mask_iou"], want["mask_iou"])


def test_failing_shared_forward_falls_back_to_one_image_at_a_time(stage) -> None:
    """An error of one image's encoder input (not running out of memory, which is raised:
    tests/test_out_of_memory.py) fails that image only."""
    flaky = SegmentStage(build_tiny_sam(seed=0), upsample_chunk=2, image_batch=4)
    items = _batch_items()
    items[1]["image"] = np.zeros_like(items[1]["image"])  # the culprit: a constant image
    calls: list[int] = []

    def bad_input(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        (x,) = args
        calls.append(len(x))
        if len(x) > 1 or bool((x[0, 0, :4, :4] == x[0, 0, 0, 0]).all()):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM")

    flaky.sam.image_encoder.register_forward_pre_hook(bad_input)
    out = flaky(items)
    assert calls == [3, 1, 1, 1]
    assert out[1]["error"] == {"stage": "segment", "reason": "RuntimeError: cuDNN error: CUDNN_STATUS_BAD_PARAM",
                              "kind": "image"}
    for i in (0, 2):
        (alone,) = stage([_batch_items()[i]])
        assert out[i]["masks"] == alone["masks"] and np.array_equal(out[i]["mask_iou"], alone["mask_iou"])
