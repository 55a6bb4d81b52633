"""Prepare stages: the CPU half of the model stages, run in CPU actors so that the GPU
actors receive inputs ready for the device (paper models: Deformable-DETR, SAM, CLIP).

Each model stage prepares its input in two halves: resizing (PIL; the costly part) gives
a small uint8 array, then normalising and padding (cheap elementwise work) run on the
model's device. Resized uint8 images are also 4x fewer bytes through Ray's object store
than normalised float32 ones. A model stage given an item without its prepared key
prepares it itself with the same function, so its result is the same either way.

==================  ======================================================================
key                 value (added by)
==================  ======================================================================
detector_pixels     uint8 [h, w, 3]: the image resized by the detector's image processor
                    (``model_inputs.detector_pixels``; :class:`PrepareImageStage`)
sam_pixels          uint8 [h, w, 3]: resized as ``SamPredictor`` does, longest side = the
                    encoder's input side (``model_inputs.sam_pixels``; :class:`PrepareImageStage`)
clip_pixels         uint8 [S, S, 3]: LLaVA-1.5 'pad' in the CLIP frame
                    (``model_inputs.clip_pixels``; :class:`PrepareImageStage`)
clip_masks          float32 [K, S, S]: every mask row in the same frame, soft
                    (``model_inputs.clip_masks``; :class:`PrepareMaskStage`, after the filter)
==================  ======================================================================

After :class:`PrepareImageStage` no stage needs the full-resolution ``image`` (sizes come
from ``height`` and ``width``), so the Ray graph drops it there (pipeline/graph.py). A
failure to prepare a model's input is that model stage's failure, with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .batch import Batch, exception_reason, fail, fail_with, failed
from .model_inputs import ClipFrame, clip_masks, clip_pixels, detector_pixels, sam_pixels


class PrepareImageStage:
    """Adds the resized inputs of the models that follow: ``detector_pixels`` when given the
    detector's image processor, ``sam_pixels`` when given SAM's input side, ``clip_pixels``
    (always; ``clip``: open_clip's preprocessing settings, ``models.load_inputs("clip", ...)``)."""

    def __init__(self, clip: dict, detector_processor: Any = None, sam_side: int | None = None) -> None:
        frame = ClipFrame.from_cfg(clip)
        #: (key, the model stage a failure is recorded for, image -> prepared array)
        self.preparers: list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]] = []
        if detector_processor is not None:
            self.preparers.append(("detector_pixels", "detect", lambda im: detector_pixels(im, detector_processor)))
        if sam_side is not None:
            self.preparers.append(("sam_pixels", "segment", lambda im: sam_pixels(im, sam_side)))
        self.preparers.append(("clip_pixels", "invert", lambda im: clip_pixels(im, frame)))

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            for key, stage, prepare in self.preparers:
                if failed(item):
                    break
                try:
                    item[key] = prepare(item["image"])
                except Exception as exc:  # noqa: BLE001 - e.g. an image too thin to resize
                    # out of host memory: raised, retried alone, a resource failure (stages/chain.py)
                    fail_with(item, stage, exc, "preprocessing failed: ")
        return batch


class PrepareMaskStage:
    """Adds ``clip_masks`` (float32 [K, S, S]): the item's final mask rows in the CLIP frame
    (S from ``clip``, open_clip's preprocessing settings). Runs after the filter, which may
    drop rows."""

    def __init__(self, clip: dict) -> None:
        frame = ClipFrame.from_cfg(clip)
        self.side, self.framing = frame.size, frame.framing

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            if failed(item):
                continue
            try:
                item["clip_masks"] = clip_masks(item, self.side, self.framing)
            except (ValueError, KeyError, TypeError) as exc:
                fail(item, "invert", exception_reason(exc))
        return batch
