"""Invert stage: per image, the global token, pooled patch tokens and one MaskInversion
token per mask (paper sections 3.1-3.2), over batches of records.

The algorithm lives in ``maskinversion.py`` (optimisation) and ``legrad.py`` (the
explainability map); :func:`invert_masks` is re-exported here as the public entry point for
researchers who want MaskInversion outside the pipeline.

Batch contract: a batch is ``list[dict]``, one dict per image. Read: ``image`` (uint8
[H, W, 3] RGB, original resolution), ``masks`` (COCO RLE dicts of that size, background
last). Items with an ``error`` are passed through untouched; an item whose image or masks
cannot be used gets a failure record (``stages.batch.fail``, stage "invert"). Every row is
inverted, suppressed ones (``keep_rank == -1``) included, as the paper does for all masks. Added (float32, names of ``schemas/record.py``):
``object_tokens`` [K, D], ``inversion_loss`` [K], ``global_token`` [D], ``patch_tokens``
[36, C], ``patch_norm_mean``, ``patch_norm_std``, and with ``patch_grid`` 12 (the spec's
``write.patch_grid``) ``patch_tokens_144`` [144, C].
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.clip import preprocess_cfg
from ..schemas.errors import SpecError
from ..schemas.record import FINE_GRID, FINE_PATCH_ARRAY, POOLED_GRID
from ..schemas.spec import InvertSpec
from .batch import Batch, Item, exception_reason, fail, failed
from .legrad import triton_unavailable
from .maskinversion import invert_batch, invert_masks, legrad_maps
from .precision import at_precision, operator_dtype
from .model_inputs import ClipFrame, clip_masks, clip_pixels
from .vision import normalise_pixels

__all__ = ["InvertStage", "invert_masks", "invert_batch", "legrad_maps"]


class InvertStage:
    """CLIP forward + MaskInversion over a batch of records.

    ``model``: a built open_clip CLIP (``models/clip.py``); the stage runs on its device.
    ``spec``: the job's ``invert`` section. Images are processed ``images_per_group`` at a
    time, all their masks optimised together (default: the whole batch on a GPU, which keeps
    it busy; 1 on CPU, where grouping gains nothing and costs memory).
    ``spec.precision`` (stages/precision.py): ``bf16`` runs the network and the LeGrad
    products under bf16 autocast, ``tf32`` lets CUDA matmuls use TF32, ``bf16-operator``
    stores the LeGrad operator in bf16 and runs the rest in fp32; tokens, optimiser and
    losses stay fp32. ``spec.kernel``: the relevance's implementation (``legrad.py``
    ``relevance_function``); "triton" on a device it cannot run on is refused here, in one
    line, before any image is read. ``patch_grid`` 12 adds the 12x12 pooled patch tokens to each item.
    """

    def __init__(self, model: torch.nn.Module, spec: InvertSpec, images_per_group: int | None = None,
                 patch_grid: int = POOLED_GRID) -> None:
        self.spec, self.model = spec, model.eval()
        self.fine = patch_grid == FINE_GRID
        self.device = next(model.parameters()).device
        reason = triton_unavailable(self.device) if spec.kernel == "triton" else None
        if reason is not None:
            raise SpecError(f"invert.kernel = \"triton\": {reason}; use \"auto\" or \"torch\"")
        self.frame = ClipFrame.from_cfg(preprocess_cfg(model), spec.framing)
        self.images_per_group = images_per_group

    def _prepare(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """The item's image (uint8 [S, S, 3]) and masks (float32 [K, S, S]) in the CLIP frame:
        prepared by a CPU actor (``clip_pixels``, ``clip_masks``) or here."""
        side = self.frame.size
        if "clip_pixels" in item:
            pixels = item["clip_pixels"]
            if pixels.shape != (side, side, 3):
                raise ValueError(f"CLIP input prepared as {pixels.shape}, the model takes {(side, side, 3)}")
        else:
            pixels = clip_pixels(item["image"], self.frame)
        masks = item["clip_masks"] if "clip_masks" in item else clip_masks(item, side, self.frame.framing)
        return pixels, masks

    def __call__(self, batch: Batch) -> Batch:
        todo = []
        for item in batch:
            if failed(item):
                continue
            try:
                todo.append((item, *self._prepare(item)))
            except (ValueError, KeyError, TypeError) as exc:
                fail(item, "invert", exception_reason(exc))
        group = self.images_per_group or (len(todo) if self.device.type == "cuda" else 1)
        for start in range(0, len(todo), max(1, group)):
            self._run(todo[start : start + max(1, group)])
        return batch

    def _run(self, group: list[tuple[Item, np.ndarray, np.ndarray]]) -> None:
        spec = self.spec
        frame = self.frame
        images = torch.stack([normalise_pixels(torch.tensor(p, device=self.device), frame.mean, frame.std)
                              for _, p, _ in group])
        masks = [torch.tensor(m, device=self.device) for _, _, m in group]
        with at_precision(self.device, spec.precision):
            tokens, losses, features = invert_batch(
                self.model, images, masks, iterations=spec.iterations, lr=spec.lr,
                alpha=spec.alpha, weight_decay=spec.weight_decay, layer_index=spec.layer_index,
                operator_dtype=operator_dtype(spec.precision), kernel=spec.kernel,
            )
        for b, (item, _, _) in enumerate(group):
            item["object_tokens"] = tokens[b].float().cpu().numpy()
            item["inversion_loss"] = losses[b].float().cpu().numpy()
            item["global_token"] = features.global_token[b].float().cpu().numpy()
            item["patch_tokens"] = features.patch_tokens[b].float().cpu().numpy()
            if self.fine:
                item[FINE_PATCH_ARRAY.name] = features.fine_patch_tokens[b].float().cpu().numpy()
            item["patch_norm_mean"] = float(features.patch_norm_mean[b])
            item["patch_norm_std"] = float(features.patch_norm_std[b])
