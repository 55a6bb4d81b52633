"""The visual-token spec: which tokens of a cached image the model sees, as one short string.

Grammar (comma-separated items, each at most once; the tokens always come out in the order
global, patch, objects, whatever the order written)::

    cls                    the global token (CLIP image embedding)
    patch[:N[:MODE]]       N patch tokens pooled from the cached grid (raster order); default 36.
                           N = 1, 4, 9, 36 pool the 6x6 grid; 16 and 144 need the 12x12 grid
                           (a cache planned with write.patch_grid = 12); any other N needs
                           ``:prune`` written out (N <= 36)
    obj[:K][:all][@iouX]   at most K object tokens, the background counting as one; default all
                           rows. Without ``:all`` the objects are those the IoU filter kept, by
                           keep_rank (trainer/visual/compose.py); ``:all`` takes every stored row in
                           stored order, suppressed and empty masks included (paper 3.5, 4.3:
                           the model is trained on all 101). @iouX re-filters the objects at
                           IoU threshold X (0 < X <= 1) from the stored mask IoUs instead of the
                           plan's keep_rank (trainer/visual/refilter.py); not with ``:all``

Patch reduction (paper 3.5 and C.6), from the cached grids: every store has the 6x6 grid
(``patch_tokens``), a store planned with ``write.patch_grid = 12`` also the 12x12 grid
(``patch_tokens_144``; schemas/record.py):

- ``pool`` (avg): N must be g*g with g dividing 6 (1, 4, 9, 36: the 6x6 grid, average-pooled
  with kernel = stride = 6/g: patch:9 = 2x2 pooling -> 3x3, patch:4 = 3x3 pooling -> 2x2,
  patch:1 = the mean) or g dividing 12 (16, 144: the 12x12 grid pooled 3x3 -> 4x4, or as
  stored). Both grids are exact average poolings of the 24x24 grid, so each count equals
  direct average pooling of the 24x24 grid, to float16 rounding. A count both grids give is
  taken from the 6x6 grid: the tokens of ``patch:36`` (and 9, 4, 1) are then the same
  whether or not the cache keeps the finer grid, and the 6x6 grid was pooled from the fp32
  tokens, not from float16-rounded 12x12 ones. This is the default for those N.
- ``max``: the same windows of the same grid, max-pooled (C.6 row 3; a max over the windows
  of a pooled grid, not over the 24x24 tokens).
- ``prune``: keep N of the 36 tokens: a random subset drawn once with a fixed seed
  (``numpy.random.default_rng(0)``), the same positions for every image and every run,
  returned in raster order (the paper "randomly samples" the tokens it keeps, C.6 row 2).
  It must be asked for by name (``patch:23:prune``, the paper's 29-token setting): a count
  no grid pools to exactly is refused in one line naming the counts there are, never
  silently pruned; so is ``patch:16`` or ``patch:144`` (Tables 3 and 2) on a cache with the
  6x6 grid only (:func:`require_patches`, when the trainer or generation opens the cache,
  and again by compose.py for any record that lacks the 12x12 grid).

The paper's settings (``PAPER_SPECS``): the model is trained on ``cls,patch:36,obj:101:all``
(138 tokens, every mask; the training default) and tested on that spec (138) and on
``cls,patch:36,obj:20`` (57), ``cls,patch:36,obj:5`` (42), ``cls,patch:23:prune,obj:5`` (29) and
``cls,patch:9,obj:5`` (15): the IoU filter, then confidence (3.5). ``cls,patch:36,obj:101``
is the filtered composition (every kept object, at most 101 tokens: fewer wherever the
filter suppressed masks), masktok's default before issue 38.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...schemas.errors import TokenSpecError
from ...schemas.record import FINE_GRID, FINE_PATCH_ARRAY, POOLED_GRID, POOLED_PATCHES
PATCH_MODES = ("pool", "max", "prune")
PRUNE_SEED = 0
OBJECT_MODES = ("filtered", "all")
PAPER_SPECS = {
    138: "cls,patch:36,obj:101:all",
    57: "cls,patch:36,obj:20",
    42: "cls,patch:36,obj:5",
    29: "cls,patch:23:prune,obj:5",
    15: "cls,patch:9,obj:5",
}
DEFAULT_SPEC = PAPER_SPECS[138]  # training: every mask (paper 4.3, "the backbone trained on 138 tokens")
FILTERED_SPEC = "cls,patch:36,obj:101"  # the IoU-filtered composition at the same budget


@dataclass(frozen=True)
class TokenSpec:
    """Parsed spec: ``patches`` 0 means no patch tokens, ``objects`` None means all;
    ``object_mode`` "filtered" (kept rows by keep_rank) or "all" (every stored row)."""

    cls: bool = True
    patches: int = POOLED_PATCHES
    patch_mode: str = "pool"
    use_objects: bool = True
    objects: int | None = None
    iou: float | None = None
    object_mode: str = "filtered"

    def __str__(self) -> str:
        items = ["cls"] if self.cls else []
        if self.patches:
            items.append(f"patch:{self.patches}" + ("" if self.patch_mode == "pool" else f":{self.patch_mode}"))
        if self.use_objects:
            items.append(("obj" if self.objects is None else f"obj:{self.objects}")
                         + (":all" if self.object_mode == "all" else "")
                         + ("" if self.iou is None else f"@iou{self.iou:g}"))
        return ",".join(items)

    def max_tokens(self, max_objects: int) -> int:
        """Tokens of an image that has at least ``max_objects`` object rows worth keeping."""
        k = 0 if not self.use_objects else (max_objects if self.objects is None else min(self.objects, max_objects))
        return int(self.cls) + self.patches + k


_POOLABLE = {g * g: g for g in (1, 2, 3, 6)}  # from the 6x6 grid
_FINE_ONLY = {g * g: g for g in (4, 12)}  # only from the 12x12 grid (its 1, 2, 3, 6 the 6x6 gives)


def patch_counts(patch_grid: int) -> tuple[int, ...]:
    """The patch counts a cache whose finest grid is ``patch_grid`` pools to exactly."""
    return tuple(sorted({**_POOLABLE, **(_FINE_ONLY if patch_grid == FINE_GRID else {})}))


def _listing(counts: tuple[int, ...]) -> str:
    return ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}"


def require_patches(spec: TokenSpec, patch_grid: int, cache: object) -> None:
    """Refuse, in one line naming what it can give, a pooled patch count the cache (whose
    finest grid is ``patch_grid``) cannot give exactly."""
    n = spec.patches
    if n and spec.patch_mode != "prune" and n not in patch_counts(patch_grid):
        raise TokenSpecError(f"token spec {str(spec)!r}: {cache} keeps the {patch_grid}x{patch_grid} patch grid, "
                             f"which pools exactly to {_listing(patch_counts(patch_grid))} tokens, not {n}; "
                             f"plan the job with --set write.patch_grid=12 for 16 and 144")


def patch_source(n: int) -> tuple[str, int, int]:
    """Where pooled ``patch:n`` comes from: (record array, its grid side, window side)."""
    if n in _POOLABLE:
        return "patch_tokens", POOLED_GRID, POOLED_GRID // _POOLABLE[n]
    return FINE_PATCH_ARRAY.name, FINE_GRID, FINE_GRID // _FINE_ONLY[n]


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
            mode = args[1] if len(args) == 2 else "pool"
            if mode not in PATCH_MODES:
                raise TokenSpecError(f"token spec {text!r}: patch mode {mode!r} is not one of {PATCH_MODES}")
            top = POOLED_PATCHES if mode == "prune" else FINE_GRID * FINE_GRID
            if not 1 <= n <= top:
                raise TokenSpecError(f"token spec {text!r}: {item!r} needs 1..{top} patch tokens")
            if mode != "prune" and n not in patch_counts(FINE_GRID):
                raise TokenSpecError(f"token spec {text!r}: {item!r}: the cached 6x6 grid pools exactly to 1, 4, 9 "
                                     f"or 36 tokens (16 or 144 too with write.patch_grid = 12), not {n}"
                                     + (f"; patch:{n}:prune keeps a random {n} of the 36" if n <= POOLED_PATCHES else ""))
            fields.update(patches=n, patch_mode=mode)
        elif name == "obj" and len(args) <= 2:
            mode = args.pop() if args and args[-1] in OBJECT_MODES else "filtered"
            if len(args) > 1:
                raise TokenSpecError(f"token spec {text!r}: {item!r}: use obj[:K][:all]")
            k = _int(args[0], item, text) if args else None
            if k is not None and k < 1:
                raise TokenSpecError(f"token spec {text!r}: {item!r} needs at least one object token")
            if mode == "all" and iou:
                raise TokenSpecError(f"token spec {text!r}: @{iou} re-filters objects; obj:all takes every row "
                                     "unfiltered, so the two do not combine")
            fields.update(use_objects=True, objects=k, iou=_iou(iou, text) if iou else None, object_mode=mode)
        else:
            raise TokenSpecError(f"token spec {text!r}: unknown item {item!r} (use cls, patch[:N[:pool|max|prune]], obj[:K][:all])")
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


def paper_budget(spec: "TokenSpec | str") -> int | None:
    """The paper's token count of ``spec`` when it is one of ``PAPER_SPECS``, else None."""
    text = str(parse_spec(spec) if isinstance(spec, str) else spec)
    return next((n for n, s in PAPER_SPECS.items() if str(parse_spec(s)) == text), None)


def prune_indices(n: int) -> np.ndarray:
    """The raster positions kept by ``patch:n:prune``: a fixed seeded subset, sorted."""
    rng = np.random.default_rng(PRUNE_SEED)
    return np.sort(rng.permutation(POOLED_PATCHES)[:n])

