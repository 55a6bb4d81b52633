"""Detection stage: Deformable-DETR boxes (paper: the top 100 boxes per image). The model is
built in ``models/detector.py``.

Which top-k (``detect.selection``; the paper says "the top 100 boxes" and not how):

- ``query`` (the default, masktok's choice): class-agnostic, each query is one box, scored
  by its highest class probability (sigmoid, as Deformable-DETR is trained with a sigmoid
  focal loss; there is no "no object" class); the top ``detect.top_k`` queries are kept, so
  100 distinct boxes.
- ``query-class``: Deformable-DETR's own post-processing (its ``PostProcess``, and
  transformers' ``post_process_object_detection``): the top ``top_k`` over all query x class
  probabilities, so a query confident in two classes gives its box twice (the IoU filter,
  threshold 0.8, then suppresses the copy's mask).

Neither applies a threshold.

Batching: the processor pads a batch of differently sized images to a common canvas, and
the padding leaks into the result through the backbone convolutions (on the tiny model the
logits of an image move by ~0.15 when a portrait image joins its batch). So every image is
preprocessed alone and only images whose preprocessed tensors have the same shape are run
together, unpadded: an image's boxes do not depend on what else is in its batch (up to
float rounding, ~1e-7).

Input preparation is split in two: ``model_inputs.detector_pixels`` resizes on the CPU (the costly
part; CPU actors run it, ``stages/prepare.py``), the stage rescales and normalises on the
model's device. An item that arrives with ``detector_pixels`` skips the resize.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from transformers import DeformableDetrForObjectDetection, DeformableDetrImageProcessor

from .batch import Batch, Item, fail_with, failed
from .model_inputs import detector_pixels
from .precision import at_precision



def class_agnostic_top_k(
    logits: torch.Tensor, pred_boxes: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k`` queries of one image by their best class probability.

    ``logits`` ``[Q, C]``, ``pred_boxes`` ``[Q, 4]`` (normalised cx, cy, w, h). Returns
    ``(scores [k'], boxes [k', 4] normalised cxcywh, query indices [k'])`` with
    ``k' = min(k, Q)``, sorted by descending score; ties keep query order (stable sort), so
    the result is deterministic and every query appears at most once.
    """
    scores = logits.sigmoid().amax(dim=-1)
    order = torch.sort(scores, descending=True, stable=True).indices[: min(k, scores.numel())]
    return scores[order], pred_boxes[order], order


def query_class_top_k(
    logits: torch.Tensor, pred_boxes: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k`` query x class pairs of one image, as Deformable-DETR's post-processing takes
    them: the same arguments and results as :func:`class_agnostic_top_k`, but a query index
    may repeat (one row per pair); ties keep (query, class) order."""
    flat = logits.sigmoid().reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices[: min(k, flat.numel())]
    queries = torch.div(order, logits.shape[-1], rounding_mode="floor")
    return flat[order], pred_boxes[queries], queries


#: ``detect.selection`` -> how an image's top-k boxes are chosen.
SELECTIONS = {"query": class_agnostic_top_k, "query-class": query_class_top_k}


def to_pixel_xyxy(boxes_cxcywh: torch.Tensor, width: int, height: int) -> np.ndarray:
    """Normalised cxcywh -> float32 xyxy in pixels of a ``width`` x ``height`` image, clipped."""
    cx, cy, w, h = boxes_cxcywh.double().unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    size = torch.tensor([width, height, width, height], dtype=torch.float64, device=xyxy.device)
    return torch.minimum((xyxy * size).clamp(min=0), size).float().cpu().numpy()


class DetectStage:
    """Adds ``boxes`` (float32 [M, 4] xyxy pixels, clipped) and ``scores`` (float32 [M]).

    ``M = min(top_k, num_queries)`` (``query-class``: ``min(top_k, num_queries x classes)``),
    rows sorted by descending score. Runs on the model's
    device, its forward at ``precision`` (stages/precision.py).
    """

    def __init__(self, model: DeformableDetrForObjectDetection, processor: DeformableDetrImageProcessor,
                 top_k: int = 100, precision: str = "fp32", selection: str = "query") -> None:
        self.model, self.processor, self.top_k, self.precision = model.eval(), processor, top_k, precision
        self.select = SELECTIONS[selection]
        self.device = next(model.parameters()).device

    def _pixels(self, item: Item) -> np.ndarray | None:
        """The item's resized image (prepared by a CPU actor, or resized here)."""
        if "detector_pixels" in item:
            return item["detector_pixels"]
        try:
            return detector_pixels(item["image"], self.processor)
        except Exception as exc:  # noqa: BLE001 - e.g. an image too thin to resize
            fail_with(item, "detect", exc, "preprocessing failed: ")
            return None

    def normalise(self, pixels: list[np.ndarray]) -> torch.Tensor:
        """Resized uint8 [h, w, 3] images of one shape -> the model input [B, 3, h, w] on the
        device, rescaled and normalised as the processor does (to float rounding)."""
        x = torch.stack([torch.tensor(p, device=self.device) for p in pixels]).permute(0, 3, 1, 2).contiguous()
        x = (x.double() * self.processor.rescale_factor).float()
        mean = torch.tensor(self.processor.image_mean, dtype=torch.float32, device=self.device)[:, None, None]
        std = torch.tensor(self.processor.image_std, dtype=torch.float32, device=self.device)[:, None, None]
        return (x - mean) / std

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> Batch:
        groups: dict[tuple[int, ...], list[tuple[Item, np.ndarray]]] = defaultdict(list)
        for item in batch:
            if failed(item):
                continue
            pixels = self._pixels(item)
            if pixels is not None:
                groups[tuple(pixels.shape)].append((item, pixels))
        for members in groups.values():
            pixel_values = self.normalise([p for _, p in members])
            mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long,
                              device=self.device)
            with at_precision(self.device, self.precision):
                outputs = self.model(pixel_values=pixel_values, pixel_mask=mask)
            logits, pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
            for i, (item, _) in enumerate(members):
                scores, boxes, _ = self.select(logits[i], pred_boxes[i], self.top_k)
                item["boxes"] = to_pixel_xyxy(boxes, item["width"], item["height"])
                item["scores"] = scores.float().cpu().numpy()
        return batch
