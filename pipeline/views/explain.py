"""Explainability maps of stored object tokens, recomputed on demand for `inspect --maps`.

The cache keeps tokens, not maps (a map per object would dwarf the tokens). The final map
of a token is cheap to get back: one CLIP forward of the image preprocessed exactly as the
invert stage did (LLaVA 'pad': centred on a square of the mean colour, resized to the
model's input size) and one LeGrad product with the stored token
(:func:`masktok.stages.maskinversion.legrad_maps`, the map MaskInversion's dice loss saw).

Frame: maps are computed in the model frame (S x S, padded square) and mapped back to the
*original* image frame here (the pad is cropped away and the map resized), so they line up
with the masks in the picture. The dice loss of each map against its mask is recomputed in
the model frame, as the invert stage measured it, and shown beside the stored loss: they
agree up to the float16 rounding of the stored token (a large gap means the job's model or
preprocessing is not what produced the token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...schemas.jobdir import JobDir

#: Long side of a returned map in original-frame pixels (maps are coarse: 24x24 patches).
MAP_SIDE = 256


@dataclass
class Explanations:
    maps: np.ndarray  # float32 [K, h, w] in [0, 1], original frame (downscaled to MAP_SIDE)
    dice_loss: np.ndarray | None  # float32 [K]: recomputed dice loss vs the masks, model frame


def explain_tokens(jd: JobDir, spec: Any, image: np.ndarray, tokens: np.ndarray,
                   masks: np.ndarray | None = None) -> Explanations:
    """LeGrad maps of ``tokens`` [K, D] for ``image`` (uint8 RGB, original size).

    Loads the job's CLIP through :func:`resolve_checkpoints` (the tiny preset for demo jobs).
    ``masks`` (bool [K, H, W], original frame) enables the dice-loss check.
    """
    import torch
    import torch.nn.functional as F

    from ...models import load_model
    from ...models.clip import preprocess_cfg
    from ...stages.maskinversion import dice_loss_per_mask, legrad_maps
    from ...stages.vision import llava_pad_image, llava_pad_masks, pad_offsets
    from ...stages.checkpoints import resolve_checkpoints

    checkpoints = resolve_checkpoints(spec, jd.models)
    model = load_model("clip", checkpoints["clip"], variant=spec.invert.model, device="cpu")
    cfg = preprocess_cfg(model)
    size = int(cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0])
    pixels = llava_pad_image(image, size, cfg["mean"], cfg["std"])
    with torch.no_grad():
        model_maps = legrad_maps(model, pixels[None], torch.from_numpy(tokens.astype(np.float32))[None],
                                 layer_index=spec.invert.layer_index)[0].float()
    dice = None
    if masks is not None and len(masks) == len(tokens):
        dice = dice_loss_per_mask(model_maps, llava_pad_masks(masks, size)).numpy().astype(np.float32)
    height, width = image.shape[:2]
    side, left, top = pad_offsets(width, height)
    f = min(1.0, MAP_SIDE / side)  # side is the long side: the crop's long side <= MAP_SIDE
    out_side = max(1, round(side * f))
    up = F.interpolate(model_maps[None], size=(out_side, out_side), mode="bilinear", align_corners=False)[0]
    y0, x0 = round(top * f), round(left * f)
    crop = up[:, y0:y0 + max(1, round(height * f)), x0:x0 + max(1, round(width * f))]
    return Explanations(maps=crop.clamp(0, 1).numpy().astype(np.float32), dice_loss=dice)
