"""Model inputs on the CPU: the resizing half of each model stage's preprocessing, with
numpy and PIL only (no torch), so the CPU actors that run it (``stages/prepare.py``) start in
a fraction of a second and stay small. The model stages normalise on their device.

Each function reproduces its library's resize exactly (tests/test_prepare.py compares them
bit for bit, or to float rounding after normalising):

* :func:`detector_pixels`: the Deformable-DETR image processor's resize (the processor is
  given; its rescale, normalise and pad are skipped);
* :func:`sam_pixels`: ``SamPredictor``'s ``ResizeLongestSide.apply_image`` (PIL bilinear, the
  longest side to the encoder's side, each side rounded half up);
* :func:`clip_pixels` and :func:`clip_masks`: LLaVA-1.5 'pad' (``expand2square`` with the
  mean colour, PIL bicubic) and the same geometry for soft masks (PIL bilinear); or, with
  ``invert.framing = "crop"``, the centre crop of CLIP's own image processor, which
  LLaVA-1.5's release scripts for ScienceQA and MM-Vet used (``image_processor.preprocess``:
  the shortest side to S, PIL bicubic, the centre S x S; docs/eval.md). A mask's part outside
  the crop is cut off, as the image's is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .batch import Item, check_sizes, decode_mask


FRAMINGS = ("pad", "crop")


@dataclass(frozen=True)
class ClipFrame:
    """What LLaVA-1.5's preprocessing needs of a CLIP: its input side and normalisation, and
    the framing: "pad" (``expand2square``) or "crop" (the image processor's centre crop)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    framing: str = "pad"

    @classmethod
    def from_cfg(cls, cfg: dict, framing: str | None = None) -> ClipFrame:
        """From open_clip's preprocessing settings (``models.clip.preprocess_cfg``); the framing
        given, else the settings' ``framing`` key (the pipeline adds the job's), else "pad"."""
        size = cfg["size"]
        framing = framing or cfg.get("framing", "pad")
        if framing not in FRAMINGS:
            raise ValueError(f"unknown CLIP framing {framing!r}: use one of {FRAMINGS}")
        return cls(int(size if isinstance(size, int) else size[0]), tuple(cfg["mean"]), tuple(cfg["std"]), framing)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return image


def detector_pixels(image: np.ndarray, processor: Any) -> np.ndarray:
    """uint8 [h, w, 3]: ``image`` (uint8 [H, W, 3] RGB) resized exactly as the Deformable-DETR
    image ``processor`` resizes it; rescaling, normalising and padding are left to the device
    (``DetectStage.normalise``)."""
    out = processor(images=[_rgb(image)], input_data_format="channels_last",
                    do_rescale=False, do_normalize=False, do_pad=False, return_tensors="np")
    return np.ascontiguousarray(out["pixel_values"][0].transpose(1, 2, 0), dtype=np.uint8)  # [3, h, w] -> HWC


def sam_pixels(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 [h, w, 3]: ``image`` (uint8 RGB [H, W, 3]) with its longest side resized to
    ``side`` (SAM's encoder input, ``models.sam_config.sam_input_size``), as ``SamPredictor``."""
    image = _rgb(image)
    height, width = image.shape[:2]
    scale = side / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    return np.asarray(Image.fromarray(image, "RGB").resize((new_w, new_h), Image.BILINEAR))


def pad_offsets(width: int, height: int) -> tuple[int, int, int]:
    """(side, left, top) of LLaVA's ``expand2square``: the image centred on a square canvas."""
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def llava_pad_pixels(image: np.ndarray, size: int, mean: Sequence[float]) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 [size, size, 3]: the image centred on a square filled with
    the mean colour as LLaVA does (``int(m * 255)`` per channel), then PIL bicubic to ``size``
    (what both CLIPImageProcessor and open_clip's transform do for a square image)."""
    height, width = image.shape[:2]
    side, left, top = pad_offsets(width, height)
    canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in mean))
    canvas.paste(Image.fromarray(np.asarray(image), "RGB"), (left, top))
    return np.asarray(canvas.resize((size, size), Image.BICUBIC))


def llava_pad_mask_arrays(masks: Iterable[np.ndarray], size: int) -> np.ndarray:
    """Binary masks [H, W] of the original image -> soft masks float32 [K, size, size] in [0, 1].

    Same geometry as :func:`llava_pad_pixels` (same canvas offset, PIL's pixel-centre
    convention); PIL bilinear instead of bicubic so coverage stays in [0, 1] without ringing.
    One mask at a time, so memory stays bounded for large images.
    """
    out = []
    for mask in masks:
        height, width = mask.shape
        side, left, top = pad_offsets(width, height)
        canvas = Image.new("F", (side, side), 0.0)
        canvas.paste(Image.fromarray(np.asarray(mask, dtype=np.float32), "F"), (left, top))
        out.append(np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float32))
    if not out:
        return np.zeros((0, size, size), np.float32)
    return np.clip(np.stack(out), 0.0, 1.0)


def crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(new width, new height, left, top) of CLIP's image processor: the shortest side resized
    to ``size``, the other to ``int(size * long / short)``, then the centre ``size`` square."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def crop_pixels(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 [size, size, 3]: PIL bicubic resize, then the centre crop."""
    height, width = image.shape[:2]
    new_w, new_h, left, top = crop_geometry(width, height, size)
    resized = Image.fromarray(np.asarray(image), "RGB").resize((new_w, new_h), Image.BICUBIC)
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def crop_mask_arrays(masks: Iterable[np.ndarray], size: int) -> np.ndarray:
    """Binary masks [H, W] -> soft masks float32 [K, size, size] in [0, 1], the geometry of
    :func:`crop_pixels` (PIL bilinear, as the pad framing's masks)."""
    out = []
    for mask in masks:
        height, width = mask.shape
        new_w, new_h, left, top = crop_geometry(width, height, size)
        resized = Image.fromarray(np.asarray(mask, dtype=np.float32), "F").resize((new_w, new_h), Image.BILINEAR)
        out.append(np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32))
    if not out:
        return np.zeros((0, size, size), np.float32)
    return np.clip(np.stack(out), 0.0, 1.0)


def clip_pixels(image: np.ndarray, frame: ClipFrame) -> np.ndarray:
    """uint8 [S, S, 3]: ``image`` (uint8 [H, W, 3] RGB) in the CLIP frame (``frame.framing``)."""
    if frame.framing == "crop":
        return crop_pixels(_rgb(image), frame.size)
    return llava_pad_pixels(_rgb(image), frame.size, frame.mean)


def clip_masks(item: Item, side: int, framing: str = "pad") -> np.ndarray:
    """float32 [K, S, S]: the item's K masks (RLE, ``height`` x ``width``) in the CLIP frame,
    soft, in [0, 1]. One full-resolution mask at a time: 101 masks of a 12-megapixel photo
    would be 1.2 GB decoded together."""
    rles = check_sizes(list(item.get("masks", [])), (item["height"], item["width"]))
    arrays = (decode_mask(rle) for rle in rles)
    return crop_mask_arrays(arrays, side) if framing == "crop" else llava_pad_mask_arrays(arrays, side)
