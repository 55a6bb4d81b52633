"""The record: the arrays one image contributes to ``tokens.zarr`` and to a WebDataset sample.

This module is the one source of truth that writers (stages/write) and readers (trainer/,
verify, inspect) import. Shapes are written with symbolic axes:

    N  manifest rows (images)            K  max objects per image, background included
    D  CLIP embedding dim                C  CLIP vision width            P  pooled patches (36)

Object rows are ordered as the stages produced them (detector confidence order, tiles in
grid order), the background mask always last; ``keep_rank`` gives the order after
IoU/confidence filtering and -1 for a suppressed or empty mask (an empty background too).
With ``filter.max_objects`` set, only survivors are stored, in ``keep_rank`` order, then the
background. Rows past ``num_objects`` are padding (zeros, keep_rank -1).

Version 2 adds ``mask_iou``: the pairwise mask IoU of an image's K rows (background
included), upper triangle without the diagonal, row-major (pairs (0,1), (0,2), ...,
(1,2), ...), float16, so objects can be re-filtered at any IoU threshold later
(trainer/visual/refilter.py). A reader's record holds the triangle of its ``num_objects`` real
rows only, as a WebDataset sample stores it. Version-1 stores lack the array.

The finer patch grid (optional, not a record version: the spec's ``write.patch_grid = 12``):
``patch_tokens_144`` [N, 144, C] float16 holds the same 24x24 penultimate patch tokens
average-pooled 2x2 to 12x12 (raster order), from which the trainer pools exactly to 144, 36,
16 and 9 tokens (Tables 2 and 3 of the paper use 144 and 16). A store that has it says so in
its group attr ``patch_grid`` (12; absent or 6: the 6x6 grid only); ``arrays_of`` and
``tensors_of`` take that value. Stores without it are unchanged, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .versions import RECORD_SCHEMA_VERSION

POOLED_GRID = 6  # 24x24 ViT-L/14-336 patch grid average-pooled 4x4 -> 6x6
POOLED_PATCHES = POOLED_GRID * POOLED_GRID  # 36, stored in raster order
FINE_GRID = 12  # the optional finer grid: 24x24 average-pooled 2x2 -> 12x12
FINE_PATCHES = FINE_GRID * FINE_GRID  # 144, raster order
PATCH_GRIDS = (POOLED_GRID, FINE_GRID)  # the values of the spec's write.patch_grid
VERSION = RECORD_SCHEMA_VERSION


class Status(IntEnum):
    PENDING = 0
    OK = 1
    FAILED = 2


@dataclass(frozen=True)
class ArraySpec:
    name: str
    axes: tuple[str, ...]  # symbolic; the first is always "N"
    dtype: str  # numpy dtype name; "str" is a variable-length string
    fill: object  # value of a row that was never written
    meaning: str

    def shape(self, n: int, dims: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape for ``n`` rows; ``dims`` gives K, D, C and optionally P."""
        sizes = {"N": n, "P": POOLED_PATCHES, "F": FINE_PATCHES, **dims}
        if "K" in dims:
            sizes["K2"] = pairs(dims["K"])
        missing = [a for a in self.axes if a not in sizes and not a.isdigit()]
        if missing:
            raise KeyError(f"array {self.name!r} needs dims {missing}")
        return tuple(int(a) if a.isdigit() else sizes[a] for a in self.axes)

    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "str" else np.dtype(self.dtype)


ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("image_id", ("N",), "str", "", "path relative to the image root, as the corpus names it"),
    ArraySpec("status", ("N",), "uint8", int(Status.PENDING), "0 pending, 1 ok, 2 failed"),
    ArraySpec("width", ("N",), "int32", 0, "original image width in pixels"),
    ArraySpec("height", ("N",), "int32", 0, "original image height in pixels"),
    ArraySpec("num_objects", ("N",), "int16", 0, "valid rows along K (background included)"),
    ArraySpec("object_tokens", ("N", "K", "D"), "float16", 0.0, "MaskInversion tokens, background last"),
    ArraySpec("boxes", ("N", "K", "4"), "float32", 0.0, "xyxy in original pixels; background: whole image"),
    ArraySpec("scores", ("N", "K"), "float32", 0.0, "detector confidence; background: 0"),
    ArraySpec("keep_rank", ("N", "K"), "int16", -1, "order after IoU/confidence filtering, -1 if suppressed"),
    ArraySpec("inversion_loss", ("N", "K"), "float32", 0.0, "final dice loss of each inversion"),
    ArraySpec("global_token", ("N", "D"), "float16", 0.0, "CLIP image embedding"),
    ArraySpec("patch_tokens", ("N", "P", "C"), "float16", 0.0, "penultimate-layer patch tokens pooled 4x4"),
    ArraySpec("patch_norm_mean", ("N",), "float32", 0.0, "mean of the 576 patch-token norms"),
    ArraySpec("patch_norm_std", ("N",), "float32", 0.0, "std of the 576 patch-token norms"),
    ArraySpec("mask_iou", ("N", "K2"), "float16", 0.0,
              "pairwise mask IoU of the K rows, upper triangle without the diagonal, row-major (v2)"),
)
#: Arrays each record version has (readers of an older store skip the others).
SINCE_VERSION = {"mask_iou": 2}
#: The array of the finer patch grid: only in stores whose ``patch_grid`` attr is 12 (any
#: record version), so it is in neither ``ARRAYS`` nor ``TENSORS``.
FINE_PATCH_ARRAY = ArraySpec("patch_tokens_144", ("N", "F", "C"), "float16", 0.0,
                             "penultimate-layer patch tokens pooled 2x2 to 12x12 (write.patch_grid = 12)")
BY_NAME = {a.name: a for a in (*ARRAYS, FINE_PATCH_ARRAY)}

# Per-image members of a WebDataset sample: scalars go in the sample's .json, the rest
# are .npy members named after the array.
SCALARS = ("image_id", "status", "width", "height", "num_objects", "patch_norm_mean", "patch_norm_std")
TENSORS = tuple(a.name for a in ARRAYS if a.name not in SCALARS)
# Arrays with one row per object (axis K): only the first ``num_objects`` rows are real, and a
# WebDataset sample (or a reader's record) holds only those.
OBJECT_ARRAYS = tuple(a.name for a in ARRAYS if a.axes[1:2] == ("K",))


def sample_key(index: int) -> str:
    """WebDataset key of manifest row ``index`` (image ids hold dots and slashes)."""
    return f"{index:09d}"


def record_shapes(dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Per-image shapes (the N axis dropped) for the given K, D, C."""
    return {a.name: a.shape(1, dims)[1:] for a in ARRAYS}


def _fine(patch_grid: int) -> tuple[ArraySpec, ...]:
    if patch_grid not in PATCH_GRIDS:
        raise ValueError(f"patch_grid must be one of {PATCH_GRIDS}, not {patch_grid}")
    return (FINE_PATCH_ARRAY,) if patch_grid == FINE_GRID else ()


def arrays_of(version: int, patch_grid: int = POOLED_GRID) -> tuple[ArraySpec, ...]:
    """The arrays a store of record ``version`` and finest patch grid ``patch_grid`` holds."""
    return tuple(a for a in ARRAYS if SINCE_VERSION.get(a.name, 1) <= version) + _fine(patch_grid)


def tensors_of(version: int, patch_grid: int = POOLED_GRID) -> tuple[str, ...]:
    """The tensor arrays a store of record ``version`` and finest patch grid ``patch_grid`` holds."""
    return (tuple(name for name in TENSORS if SINCE_VERSION.get(name, 1) <= version)
            + tuple(a.name for a in _fine(patch_grid)))


def pairs(k: int) -> int:
    """Entries of the upper triangle (no diagonal) of a k x k matrix."""
    return k * (k - 1) // 2


def upper_triangle(square: np.ndarray) -> np.ndarray:
    """The row-major upper triangle (no diagonal) of a square matrix."""
    return np.asarray(square)[np.triu_indices(len(square), 1)]


def from_triangle(triangle: np.ndarray, n: int) -> np.ndarray:
    """The symmetric n x n matrix of an upper triangle (zero diagonal)."""
    out = np.zeros((n, n), dtype=np.asarray(triangle).dtype)
    rows, cols = np.triu_indices(n, 1)
    out[rows, cols] = triangle
    out[cols, rows] = out[rows, cols]
    return out


def leading_triangle(triangle: np.ndarray, k: int, n: int) -> np.ndarray:
    """The triangle of the first n rows, cut from the triangle of k rows (n <= k)."""
    rows, cols = np.triu_indices(k, 1)
    return np.asarray(triangle)[(rows < n) & (cols < n)]
