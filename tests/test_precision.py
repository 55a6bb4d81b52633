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


def test_the_tf32_flags_are_set_on_a_cuda_device_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags are process state: tf32 turns both on, fp32 (and bf16-operator) both off,
    whatever they were before, and each is restored after. Setting them makes no CUDA call;
    bf16 is left out because autocast on CUDA needs a GPU (it sets the flags as fp32 does)."""
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    for before in (False, True):
        monkeypatch.setattr(flags[0], "allow_tf32", before)
        monkeypatch.setattr(flags[1], "allow_tf32", before)
        for mode, inside in (("tf32", True), ("fp32", False), ("bf16-operator", False)):
            with at_precision(torch.device("cuda"), mode):
                assert (flags[0].allow_tf32, flags[1].allow_tf32) == (inside, inside), mode
            assert (flags[0].allow_tf32, flags[1].allow_tf32) == (before, before)


@pytest.mark.parametrize("name", ["detect", "segment", "invert"])
def test_every_model_stage_runs_its_forward_at_its_own_precision(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                 tiny_checkpoints) -> None:
    """A stage that ignored its ``precision`` would enter no context or another mode."""
    import importlib

    from masktok.models.clip_config import TINY_CLIP_NAME
    from masktok.schemas.spec import InvertSpec

    module = importlib.import_module(f"masktok.stages.{name}")
    entered: list[str] = []
    real = module.at_precision

    def recording(device: torch.device, mode: str):
        entered.append(mode)
        return real(device, mode)

    monkeypatch.setattr(module, "at_precision", recording)
    mode = "bf16-operator" if name == "invert" else "tf32"
    stage, item = _stage_and_item(name, mode, tiny_checkpoints, TINY_CLIP_NAME, InvertSpec)
    out = stage([item])[0]
    assert "error" not in out and entered and set(entered) == {mode}


def _stage_and_item(name: str, mode: str, checkpoints: dict, clip_name: str, invert_spec: type) -> tuple:
    from masktok.stages.invert import InvertStage
    from masktok.stages.segment import SegmentStage

    item = _items()[0]
    if name == "detect":
        return DetectStage(*load_model("detector", checkpoints["detector"], device="cpu"), top_k=5, precision=mode), item
    if name == "segment":
        item["boxes"] = np.array([[10, 20, 200, 180], [50, 60, 120, 90]], np.float32)
        sam = load_model("sam", checkpoints["sam"], variant="tiny", device="cpu")
        return SegmentStage(sam, precision=mode), item
    clip = load_model("clip", checkpoints["clip"], variant=clip_name, device="cpu")
    # three masks and six steps: the operator is materialised (2 K iterations >= D = 32), as
    # bf16-operator needs; with fewer the steps apply it lazily in fp32
    item["masks"] = [_rle(np.pad(np.ones((h, w), np.uint8), ((top, 240 - top - h), (left, 320 - left - w))))
                     for top, left, h, w in ((40, 60, 100, 120), (0, 0, 240, 100), (150, 200, 60, 60))]
    return InvertStage(clip, invert_spec(model=clip_name, iterations=6, precision=mode)), item


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def test_bf16_moves_every_model_stage_by_a_measured_nonzero_amount(tiny_checkpoints) -> None:
    """bf16 reaches each stage's arithmetic: its outputs differ from fp32's, by little.
    Measured here (tiny presets, CPU): detector scores by 3.6e-4 (largest change), SAM's
    predicted mask IoU by 5.7e-4, MaskInversion tokens by 1.0e-2 (relative L2) under bf16
    and 1.2e-3 with only the operator in bf16. The bounds sit orders below and 5x above, and
    a stage ignoring its precision (a change of exactly 0) fails them."""
    from masktok.models.clip_config import TINY_CLIP_NAME
    from masktok.schemas.spec import InvertSpec

    change = {}
    for name, field in (("detect", "scores"), ("segment", "mask_iou"), ("invert", "object_tokens")):
        outs = {}
        for mode in ("fp32", "bf16", "bf16-operator") if name == "invert" else ("fp32", "bf16"):
            stage, item = _stage_and_item(name, mode, tiny_checkpoints, TINY_CLIP_NAME, InvertSpec)
            outs[mode] = torch.from_numpy(np.asarray(stage([item])[0][field], dtype=np.float32))
        for mode in outs.keys() - {"fp32"}:
            # tokens: relative L2 change (1 - cosine would sit at float32's own rounding here)
            scale = outs["fp32"].norm().item() if name == "invert" else 1.0
            change[name, mode] = (outs["fp32"] - outs[mode]).norm().item() / scale
    for key, value in change.items():
        assert 1e-7 < value < 0.05, (key, value)
