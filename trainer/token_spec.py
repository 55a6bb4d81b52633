"""The visual-token spec: which tokens of a cached image the model sees, as one short string.

Grammar (comma-separated items, each at most once; the tokens always come out in the order
global, patch, objects, whatever the order written)::

    cls                 the global token (CLIP image embedding)
    patch[:N[:MODE]]    N of the 36 cached patch tokens (6x6 grid, raster order); default 36
    obj[:K][@iouX]      at most K object tokens, the background counting as one; default all;
                        @iouX re-filters the objects at IoU threshold X (0 < X <= 1) from the
                        stored mask IoUs instead of the plan's keep_rank (trainer/refilter.py)

Patch reduction (paper 3.5 and C.6), from the cached 6x6 grid:

- ``pool`` (avg): N must be g*g with g dividing 6, i.e. 1, 4, 9 or 36: the grid is
  average-pooled with kernel = stride = 6/g (patch:9 = 2x2 pooling -> 3x3, patch:4 = 3x3
  pooling -> 2x2, patch:1 = the mean). This is the default for those N.
- ``max``: the same windows, max-pooled (C.6 row 3).
- ``prune``: keep N of the 36 tokens: a random subset drawn once with a fixed seed
  (``numpy.random.default_rng(0)``), the same positions for every image and every run,
  returned in raster order (the paper "randomly samples" the tokens it keeps, C.6 row 2).
  This is the default for every other N (patch:23 of the paper's 29-token setting).

So the paper's test-time settings are ``cls,patch:36,obj:101`` (138), ``cls,patch:36,obj:20``
(57), ``cls,patch:36,obj:5`` (42), ``cls,patch:23,obj:5`` (29) and ``cls,patch:9,obj:5`` (15).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schemas.errors import TokenSpecError
from ..schemas.record import POOLED_GRID, POOLED_PATCHES
PATCH_MODES = ("pool", "max", "prune")
PRUNE_SEED = 0
PAPER_SPECS = {
    138: "cls,patch:36,obj:101",
    57: "cls,patch:36,obj:20",
    42: "cls,patch:36,obj:5",
    29: "cls,patch:23,obj:5",
    15: "cls,patch:9,obj:5",
}
DEFAULT_SPEC = PAPER_SPECS[138]


@dataclass(frozen=True)
class TokenSpec:
    """Parsed spec: ``patches`` 0 means no patch tokens, ``objects`` None means all."""

    cls: bool = True
    patches: int = POOLED_PATCHES
    patch_mode: str = "pool"
    use_objects: bool = True
    objects: int | None = None
    iou: float | None = None

    def __str__(self) -> str:
        items = ["cls"] if self.cls else []
        if self.patches:
            default = "pool" if self.patches in _POOLABLE else "prune"
            items.append(f"patch:{self.patches}" + ("" if self.patch_mode == default else f":{self.patch_mode}"))
        if self.use_objects:
            items.append(("obj" if self.objects is None else f"obj:{self.objects}")
                         + ("" if self.iou is None else f"@iou{self.iou:g}"))
        return ",".join(items)

    def max_tokens(self, max_objects: int) -> int:
        """Tokens of an image that has at least ``max_objects`` object rows worth keeping."""
        k = 0 if not self.use_objects else (max_objects if self.objects is None else min(self.objects, max_objects))
        return int(self.cls) + self.patches + k


_POOLABLE = {g * g: g for g in (1, 2, 3, 6)}


def parse_spec(text: str) -> TokenSpec:
    """Parse ``cls,patch:9,obj:5``-style strings; raises TokenSpecError with the bad item."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise TokenSpecError(f"empty token spec {text!r}: expected e.g. {DEFAULT_SPEC!r}")
    seen: set[str] = set()
    fields: dict[str, object] = {"cls": False, "patches": 0, "patch_mode": "pool", "use_objects": False}
    for item in items:
        item, _, iou = item.partition("@")
        name, *args = item.split(":")
        if iou and name != "obj":
            raise TokenSpecError(f"token spec {text!r}: @{iou} applies to obj only")
        if name in seen:
            raise TokenSpecError(f"token spec {text!r}: {name!r} given twice")
        seen.add(name)
        if name == "cls" and not args:
            fields["cls"] = True
        elif name == "patch" and len(args) <= 2:
            n = _int(args[0], item, text) if args else POOLED_PATCHES
            if not 1 <= n <= POOLED_PATCHES:
                raise TokenSpecError(f"token spec {text!r}: {item!r} needs 1..{POOLED_PATCHES} patch tokens")
            mode = args[1] if len(args) == 2 else ("pool" if n in _POOLABLE else "prune")
            if mode not in PATCH_MODES:
                raise TokenSpecError(f"token spec {text!r}: patch mode {mode!r} is not one of {PATCH_MODES}")
            if mode != "prune" and n not in _POOLABLE:
                raise TokenSpecError(f"token spec {text!r}: {item!r}: pooling gives 1, 4, 9 or 36 tokens; "
                                     f"use patch:{n}:prune")
            fields.update(patches=n, patch_mode=mode)
        elif name == "obj" and len(args) <= 1:
            k = _int(args[0], item, text) if args else None
            if k is not None and k < 1:
                raise TokenSpecError(f"token spec {text!r}: {item!r} needs at least one object token")
            fields.update(use_objects=True, objects=k, iou=_iou(iou, text) if iou else None)
        else:
            raise TokenSpecError(f"token spec {text!r}: unknown item {item!r} (use cls, patch[:N[:pool|max|prune]], obj[:K])")
    return TokenSpec(**fields)  # type: ignore[arg-type]


def _iou(value: str, text: str) -> float:
    try:
        if not value.startswith("iou"):
            raise ValueError
        x = float(value[3:])
    except ValueError:
        raise TokenSpecError(f"token spec {text!r}: @{value} should be @iouX, e.g. obj:20@iou0.5") from None
    if not 0 < x <= 1:
        raise TokenSpecError(f"token spec {text!r}: @{value}: the IoU threshold must be in (0, 1]")
    return x


def _int(value: str, item: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TokenSpecError(f"token spec {text!r}: {item!r} needs an integer") from None


def prune_indices(n: int) -> np.ndarray:
    """The raster positions kept by ``patch:n:prune``: a fixed seeded subset, sorted."""
    rng = np.random.default_rng(PRUNE_SEED)
    return np.sort(rng.permutation(POOLED_PATCHES)[:n])


def pool_kernel(n: int) -> int:
    """Window side for pooling the 6x6 grid down to n = g*g tokens."""
    return POOLED_GRID // _POOLABLE[n]
