"""The front half of the pipeline as one list of stages, chosen by ``masks.source``.

decode -> (detect -> segment | detect -> box masks | tiles) -> background -> filter.
The Ray code in pipeline/ may wrap each stage separately (to put models on GPU actors);
:func:`run_stages` is the plain, Ray-free way to push a batch through them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..schemas.spec import JobSpec
from .background import BackgroundStage
from .batch import Batch
from .decode import DecodeStage
from .detect import DetectStage
from .filter import FilterStage
from .masks import BoxMaskStage, TileMaskStage
from .segment import SegmentStage

Stage = Callable[[Batch], Batch]


def front_stages(
    spec: JobSpec,
    image_root: str | Path,
    detector: str | Path | None = None,
    sam: str | Path | None = None,
    device: str | torch.device | None = None,
) -> list[Stage]:
    """Stages from decode to filter. ``detector``/``sam`` override the spec's checkpoint
    paths (e.g. materialised tiny presets); models the source does not need are not loaded."""
    source = spec.masks.source
    stages: list[Stage] = [DecodeStage(spec.decode, image_root)]
    if source == "tiles":
        stages.append(TileMaskStage())
    else:
        stages.append(DetectStage(spec.detect, detector, device))
        if source == "sam":
            stages.append(SegmentStage(spec.segment, sam, device))
        else:
            stages.append(BoxMaskStage())
    return [*stages, BackgroundStage(), FilterStage(spec.filter)]


def run_stages(stages: list[Stage], batch: Batch) -> Batch:
    """Apply ``stages`` in order to one batch."""
    for stage in stages:
        batch = stage(batch)
    return batch
