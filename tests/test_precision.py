"""Per-stage precision (stages/precision.py): fp32 | tf32 | bf16 for detect and invert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masktok.models import load_model
from masktok.stages.detect import DetectStage
from masktok.stages.precision import at_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _items() -> list[dict]:
    rng = np.random.default_rng(0)
    images = [(rng.random((240, 320, 3)) * 255).astype(np.uint8) for _ in range(2)]
    return [{"index": i, "image_id": f"{i}.jpg", "path": "x", "image": im, "width": 320, "height": 240}
            for i, im in enumerate(images)]


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_a_mode_runs_under_its_autocast_and_restores_the_tf32_flags() -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    with at_precision(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with at_precision(torch.device("cpu"), "tf32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    with pytest.raises(ValueError, match="fp16"):
        with at_precision(torch.device("cpu"), "fp16"):
            pass


def test_detect_in_bf16_finds_the_fp32_boxes(tiny_checkpoints) -> None:
    """tf32 is fp32 on a CPU (exactly). bf16: each query's box and score against fp32's
    (the stage's top-k order may swap near-equal scores, so queries are compared, not ranks)."""
    from masktok.stages.detect import to_pixel_xyxy

    model, processor = load_model("detector", tiny_checkpoints["detector"], device="cpu")
    out = {mode: DetectStage(model, processor, top_k=50, precision=mode)(_items()) for mode in ("fp32", "tf32", "bf16")}
    for a, t, b in zip(out["fp32"], out["tf32"], out["bf16"]):
        assert np.array_equal(a["boxes"], t["boxes"]) and np.array_equal(a["scores"], t["scores"])
        assert b["boxes"].dtype == b["scores"].dtype == np.float32 and len(b["boxes"]) == len(a["boxes"])
    pixels = processor(images=[it["image"] for it in _items()], input_data_format="channels_last",
                       return_tensors="pt")["pixel_values"]
    runs = {}
    with torch.inference_mode():
        for mode in ("fp32", "bf16"):
            with at_precision(torch.device("cpu"), mode):
                o = model(pixel_values=pixels)
            runs[mode] = (o.logits.float().sigmoid().amax(-1), o.pred_boxes.float())
    (s32, b32), (s16, b16) = runs["fp32"], runs["bf16"]
    iou = _box_iou(to_pixel_xyxy(b32.reshape(-1, 4), 320, 240), to_pixel_xyxy(b16.reshape(-1, 4), 320, 240))
    assert np.median(iou) > 0.95 and (s32 - s16).abs().max() < 0.05, (np.median(iou), (s32 - s16).abs().max())
