"""Which weights a job runs with, and the record sizes they imply.

A checkpoint of ``"tiny"`` in the spec means the project's tiny preset: it is built once
into ``JOBDIR/models/`` in the real checkpoint format and then loaded through the real
loader, exactly like a user's checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

from ..schemas.spec import TINY, JobSpec
from ..stages.clip import TINY_CLIP_NAME, register_tiny_clip_config
from ..stages.masks import TILE_GRIDS
from ..stages.write import TokenDims
from .errors import CheckpointError
from .jobdir import JobDir
from .tiny_models import materialize_tiny_checkpoints


def resolve_checkpoints(spec: JobSpec, jd: JobDir) -> dict[str, str]:
    """Paths for the detector, SAM and CLIP (only those the mask source needs must exist)."""
    wanted = {"detector": spec.detect.checkpoint, "sam": spec.segment.checkpoint, "clip": spec.invert.checkpoint}
    if TINY in wanted.values():
        tiny = materialize_tiny_checkpoints(jd.models)
        wanted = {k: str(tiny[k]) if v == TINY else v for k, v in wanted.items()}
    needed = {"sam": ("detector", "sam", "clip"), "boxes": ("detector", "clip"), "tiles": ("clip",)}[spec.masks.source]
    for name in needed:
        if not Path(wanted[name]).exists():
            raise CheckpointError(f"{name} checkpoint not found: {wanted[name]} (see README: real checkpoints)")
    return wanted


def token_dims(spec: JobSpec) -> TokenDims:
    """K (objects incl. background), D (CLIP embed dim), C (vision width) of this job."""
    objects = sum(n * n for n in TILE_GRIDS) if spec.masks.source == "tiles" else spec.detect.top_k
    if spec.filter.max_objects is not None:
        objects = min(objects, spec.filter.max_objects)
    if spec.invert.model == TINY_CLIP_NAME:
        register_tiny_clip_config()
    config = open_clip.get_model_config(spec.invert.model)
    if config is None:
        raise CheckpointError(f"unknown open_clip model {spec.invert.model!r}")
    return TokenDims(K=objects + 1, D=int(config["embed_dim"]), C=int(config["vision_cfg"]["width"]))
