"""Which weights a job runs with, and the record sizes they imply.

A checkpoint of ``"tiny"`` in the spec means the project's tiny preset: it is built once
into ``JOBDIR/models/`` in the real checkpoint format and then loaded through the real
loader, exactly like a user's checkpoint (``models.materialize_tiny``). A job directory on
object storage has no folder the loaders can open: its tiny presets are built into the
driver's cache, ``$XDG_CACHE_HOME/masktok/tiny-models`` (``JobDir.models``), which the
stages of a one-machine run read; real checkpoints are paths every node can open anyway.
"""

from __future__ import annotations

from pathlib import Path

from ..models import TINY, materialize_tiny, quiet_model_libraries
from ..models.clip_config import clip_config
from ..schemas.errors import CheckpointError, SpecError
from ..schemas.refusals import refused_writes
from ..schemas.record import FINE_GRID
from ..schemas.spec import JobSpec
from .masks import TILE_GRIDS
from .write import TokenDims
from .topology import Group, model_checkpoint, models_needed, models_of


def resolve_checkpoints(spec: JobSpec, tiny_home: Path, groups: list[Group] | None = None) -> dict[str, str]:
    """The checkpoint path of every model the job runs (those of ``groups``, the spec's
    topology, when the caller has it); "tiny" ones are materialised in ``tiny_home`` (a job's
    ``JobDir.models``)."""
    models = models_needed(spec) if groups is None else models_of(groups)
    wanted = {m: model_checkpoint(spec, m) for m in models}
    tiny_models = tuple(m for m, path in wanted.items() if path == TINY)
    if tiny_models:  # building them: no progress bars or "no pretrained weights" notices
        quiet_model_libraries()
    with refused_writes(f"the tiny models under {tiny_home}",
                        "no half-written model stays and no shard has run yet"):
        tiny = materialize_tiny(tiny_home, tiny_models) if tiny_models else {}  # real weights: no models/ folder
    wanted = {m: str(tiny.get(m, path)) for m, path in wanted.items()}
    for model, path in wanted.items():
        if not Path(path).exists():
            raise CheckpointError(f"{model} checkpoint not found: {path} (see README: real checkpoints)")
    return wanted


def _first(value: object) -> int:
    """An open_clip size given as an int or as (height, width): its first side."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)  # type: ignore[index, arg-type]


def token_dims(spec: JobSpec) -> TokenDims:
    """K (objects incl. background), D (CLIP embed dim), C (vision width) of this job."""
    objects = sum(n * n for n in TILE_GRIDS) if spec.masks.source == "tiles" else spec.detect.top_k
    if spec.filter.max_objects is not None:
        objects = min(objects, spec.filter.max_objects)
    config = clip_config(spec.invert.model)
    if config is None:
        raise CheckpointError(f"unknown open_clip model {spec.invert.model!r}")
    vision = config["vision_cfg"]
    size, patch = (vision.get(k, 1) for k in ("image_size", "patch_size"))
    side = _first(size) // _first(patch)
    if spec.write.patch_grid == FINE_GRID and side % FINE_GRID:  # the 12x12 grid must pool exactly
        raise SpecError(f"write.patch_grid = 12 pools the CLIP patch grid to 12x12 exactly; {spec.invert.model} "
                        f"has a {side}x{side} grid, which 12 does not divide: use write.patch_grid = 6")
    return TokenDims(K=objects + 1, D=int(config["embed_dim"]), C=int(config["vision_cfg"]["width"]))
