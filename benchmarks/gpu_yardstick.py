"""What "agrees with fp32" means in bench_gpu.py (issue 21 item 2): fp32's own sensitivity.

The same agreement figures (box IoU and score, mask IoU, token cosine, final dice) are taken
between fp32 and a reduced precision, and between fp32 on an image and fp32 on the same image
moved imperceptibly: noise of one intensity level, a JPEG re-encode at quality 95; and, for
tokens, a mask optimised alone instead of with its neighbours. The noise floor is the worst
of those; a precision passes for a stage when none of its figures is worse than the floor's.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

#: Per figure: True when larger is better (IoU, cosine), False when smaller is (changes).
HIGHER_IS_BETTER = {"detect_box_iou_median": True, "detect_score_max_change": False,
                    "segment_mask_iou_median": True, "segment_mask_iou_min": True,
                    "invert_token_cosine_median": True, "invert_token_cosine_min": True,
                    "invert_dice_loss_max_change": False}
STAGE_OF = {name: name.split("_")[0] for name in HIGHER_IS_BETTER}


def one_level_noise(image: np.ndarray, seed: int) -> np.ndarray:
    """uint8 image plus -1, 0 or +1 per channel value (uniform), clipped: one intensity level."""
    step = np.random.default_rng(seed).integers(-1, 2, size=image.shape)
    return np.clip(image.astype(np.int16) + step, 0, 255).astype(np.uint8)


def jpeg_95(image: np.ndarray, seed: int) -> np.ndarray:
    """The uint8 RGB image through a JPEG encode at quality 95 and a decode."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))  # writable, as decode gives


PERTURBATIONS = {"noise_1_level": one_level_noise, "jpeg_q95": jpeg_95}


def _best_box_iou(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each box of ``ref`` (xyxy), its best IoU with a box of ``other``."""
    from torchvision.ops import box_iou

    if not len(other):
        return np.zeros(len(ref))
    return box_iou(torch.from_numpy(ref).double(), torch.from_numpy(other).double()).amax(1).numpy()


def _mask_iou(a: list[dict], b: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    from masktok.stages.batch import rle_from_json

    return np.array([float(mask_utils.iou([rle_from_json(x)], [rle_from_json(y)], [0])[0, 0]) if
                     mask_utils.area(rle_from_json(x)) + mask_utils.area(rle_from_json(y)) else 1.0
                     for x, y in zip(a, b)])


def token_agreement(ref: list[dict], out: list[dict]) -> dict[str, float]:
    """Object tokens' cosine (median, min) and the final dice's largest change, item by item."""
    cos, dice = [], []
    for a, b in zip(ref, out):
        ta, tb = torch.from_numpy(a["object_tokens"]).float(), torch.from_numpy(b["object_tokens"]).float()
        cos.append(torch.nn.functional.cosine_similarity(ta, tb, dim=-1).numpy())
        dice.append(np.abs(a["inversion_loss"] - b["inversion_loss"]))
    cos_all, dice_all = np.concatenate(cos), np.concatenate(dice)
    return {"invert_token_cosine_median": round(float(np.median(cos_all)), 5),
            "invert_token_cosine_min": round(float(cos_all.min()), 5),
            "invert_dice_loss_max_change": round(float(dice_all.max()), 5)}


def agreement(ref: dict[str, list[dict]], out: dict[str, list[dict]]) -> dict[str, float]:
    """The figures of every stage ``out`` ran (its keys among detect, segment, invert)."""
    figures: dict[str, float] = {}
    if "detect" in out:
        pairs = list(zip(ref["detect"], out["detect"]))
        box_iou = np.concatenate([_best_box_iou(a["boxes"], b["boxes"]) for a, b in pairs])
        score = max(float(np.abs(np.sort(a["scores"]) - np.sort(b["scores"])).max()) for a, b in pairs)
        figures |= {"detect_box_iou_median": round(float(np.median(box_iou)), 4),
                    "detect_score_max_change": round(score, 4)}
    if "segment" in out:
        masks = np.concatenate([_mask_iou(a["masks"], b["masks"]) for a, b in zip(ref["segment"], out["segment"])])
        figures |= {"segment_mask_iou_median": round(float(np.median(masks)), 4),
                    "segment_mask_iou_min": round(float(masks.min()), 4)}
    if "invert" in out:
        figures |= token_agreement(ref["invert"], out["invert"])
    return figures


def noise_floor(sensitivities: dict[str, dict[str, float]]) -> dict[str, float]:
    """The worst value of each figure over fp32's imperceptible changes."""
    floor: dict[str, float] = {}
    for figures in sensitivities.values():
        for name, value in figures.items():
            worse = min if HIGHER_IS_BETTER[name] else max
            floor[name] = worse(floor.get(name, value), value)
    return floor


def passes(figures: dict[str, float], floor: dict[str, float]) -> dict[str, bool]:
    """Per stage: True when none of its figures is worse than the noise floor's."""
    verdict: dict[str, bool] = {}
    for name, value in figures.items():
        if name not in floor:
            continue
        ok = value >= floor[name] if HIGHER_IS_BETTER[name] else value <= floor[name]
        verdict[STAGE_OF[name]] = verdict.get(STAGE_OF[name], True) and ok
    return verdict


def masks_alone(stage: Any, inputs: list[dict], batched: list[dict], per_image: int) -> tuple[list[dict], list[dict]]:
    """The first ``per_image`` masks of each invert input optimised alone (one mask per call):
    (the batched run's tokens for those masks, the lone runs' tokens), as invert items."""
    together, alone = [], []
    for item, full in zip(inputs, batched):
        keep = min(per_image, len(full.get("object_tokens", [])))
        together.append({"object_tokens": full["object_tokens"][:keep], "inversion_loss": full["inversion_loss"][:keep]})
        lone = [stage([dict(item, clip_masks=item["clip_masks"][k:k + 1])])[0] for k in range(keep)]
        alone.append({"object_tokens": np.stack([o["object_tokens"][0] for o in lone]).reshape(keep, -1),
                      "inversion_loss": np.array([o["inversion_loss"][0] for o in lone])})
    return together, alone
