"""Helpers every stage shares: failure records, per-row keys, device choice, RLE codecs.

The batch contract itself is documented in the package docstring (``masktok.stages``).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..schemas.failures import DEVICE_MEMORY, HOST_MEMORY, IMAGE, RESOURCE, TIME, resource_reason

#: Keys that hold one entry per object row (background included once it is appended).
#: Stages that drop or reorder rows must apply the same selection to all of them.
ROW_KEYS: tuple[str, ...] = ("boxes", "scores", "masks", "mask_iou", "keep_rank")

Item = dict[str, Any]
Batch = list[Item]


def failed(item: Item) -> bool:
    """True for an item an earlier stage marked as failed: later stages pass it through."""
    return "error" in item


def fail(item: Item, stage: str, reason: str, kind: str = IMAGE) -> Item:
    """Mark ``item`` failed in place (first failure wins) and return it; ``kind``: whose
    fault (schemas/failures.py: the image's, or the run's resources)."""
    item.setdefault("error", {"stage": stage, "reason": reason, "kind": kind})
    return item


def out_of_memory(exc: BaseException) -> bool:
    """Running out of (GPU or host) memory: a property of how many images a call holds, not of
    an image: stages/chain.call_stage retries smaller batches, and records an image that
    alone still runs out as a resource failure (:func:`fail_for`). torch is looked
    up only if the process imported it (a decode actor never loads torch)."""
    return _memory(exc) is not None


def _memory(exc: BaseException) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return DEVICE_MEMORY
    return HOST_MEMORY if isinstance(exc, MemoryError) else None


def exhausted_resource(exc: BaseException) -> str | None:
    """What ``exc`` says the run ran out of (device or host memory, time), or None: the
    image's own failure."""
    return _memory(exc) or (TIME if isinstance(exc, TimeoutError) else None)


def fail_for(item: Item, stage: str, exc: BaseException, prefix: str = "") -> Item:
    """Record ``exc`` as ``item``'s failure, of the kind it shows: a resource failure
    (out of memory, a timeout; its reason says which), or the image's."""
    resource = exhausted_resource(exc)
    if resource is not None:
        return fail(item, stage, resource_reason(resource, exception_reason(exc)), RESOURCE)
    return fail(item, stage, prefix + exception_reason(exc))


def fail_with(item: Item, stage: str, exc: BaseException, prefix: str = "") -> Item:
    """Record ``exc`` as ``item``'s failure (:func:`fail_for`), unless it is running out of
    memory (:func:`out_of_memory`): that is re-raised for the caller to retry smaller batches."""
    if out_of_memory(exc):
        raise exc
    return fail_for(item, stage, exc, prefix)


def exception_reason(exc: BaseException) -> str:
    """One line naming the exception, for a failure record."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks ``[N, H, W]`` (bool or 0/1) -> N COCO RLE dicts (``size``, ``counts`` bytes)."""
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    return mask_utils.encode(fortran)


def encode_mask(mask: np.ndarray) -> dict:
    """One binary ``[H, W]`` mask -> one COCO RLE dict."""
    return encode_masks(mask[None])[0]


def rle_to_json(rle: dict) -> dict:
    """A COCO RLE dict as JSON can hold it (``counts`` as str), e.g. a sample's masks.json."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode() if isinstance(counts, bytes) else counts}


def rle_from_json(rle: dict) -> dict:
    """The inverse of :func:`rle_to_json`: the dict pycocotools takes (``counts`` as bytes)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def decode_mask(rle: dict) -> np.ndarray:
    """One COCO RLE dict (``counts`` as bytes or str) -> bool ``[H, W]``."""
    with warnings.catch_warnings():  # pycocotools' __array__ predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle_from_json(rle)).astype(bool)


def check_sizes(rles: list[dict], size: tuple[int, int]) -> list[dict]:
    """``rles``, after checking every mask is ``size`` (H, W) (ValueError otherwise)."""
    for rle in rles:
        if tuple(rle["size"]) != tuple(size):
            raise ValueError(f"mask size {tuple(rle['size'])} differs from image size {tuple(size)}")
    return rles


def decode_masks(rles: list[dict], size: tuple[int, int] | None = None) -> np.ndarray:
    """COCO RLE dicts -> bool ``[K, H, W]``, the inverse of :func:`encode_masks`.

    With ``size`` (H, W) every mask must have that size (ValueError otherwise), and no
    masks give ``[0, H, W]``; without it, no masks give ``[0, 0, 0]``.
    """
    if size is not None:
        check_sizes(rles, size)
    if not rles:
        return np.zeros((0, *(size or (0, 0))), bool)
    return np.stack([decode_mask(rle) for rle in rles])


def take_rows(item: Item, rows: np.ndarray | list[int]) -> None:
    """Keep only ``rows`` (in that order) of every per-row key present in ``item``."""
    rows = np.asarray(rows, dtype=np.int64)
    for key in ROW_KEYS:
        if key not in item:
            continue
        value = item[key]
        item[key] = [value[i] for i in rows] if isinstance(value, list) else value[rows]
    if "pairwise_iou" in item:  # one row and one column per row
        item["pairwise_iou"] = item["pairwise_iou"][np.ix_(rows, rows)]
