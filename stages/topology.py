"""The stage topology, defined once: what runs, in which group, with which resources and
which model. Everything else derives from it: the Ray graph (one actor pool per group,
pipeline/graph.py), the in-process chain (chain.py, :func:`front_stages`), the checkpoints a
job needs (checkpoints.py) and the GPU check (pipeline/run.py). It sits in stages/, below the
pipeline, so that ``masktok ask`` (inference/) runs the same chain as a job with no Ray.

    group    stages                                        resources            model  device
    decode   decode + prepare                              [decode.resources]   -      CPU
    detect   detect                                        [detect.resources]   detector GPU
    segment  segment                                       [segment.resources]  sam    GPU
    filter   background + filter + prepare_masks           [filter.resources]   -      CPU
    invert   invert                                        [invert.resources]   clip   GPU

The model groups get ready inputs: the CPU groups resize the image for each model
(``prepare``) and bring the final masks into the CLIP frame (``prepare_masks``), see
``stages/prepare.py``; the GPU actors only normalise on the device and run their model.

``masks.source`` swaps the middle (paper Table 2): ``boxes`` drops the segment group and
puts box masks first in the filter group (no SAM); ``tiles`` also drops the detect group and
puts tiles first in the filter group (no detector, no SAM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import load_inputs, load_model
from ..schemas.spec import JobSpec, Resources
from .batch import Batch

Stage = Callable[[Batch], Batch]


@dataclass(frozen=True)
class StageDef:
    """One stage: its name (as failures record it), the model of ``models.MODEL_REGISTRY`` it
    takes (or None) and how it is made from (spec, image root, built model)."""

    name: str
    model: str | None
    make: Callable[[JobSpec, str, Any], Stage]
    #: a CPU half of model stages: made from these models' inputs (``models.load_inputs``,
    #: by model name; those the job runs) instead of a built model
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    """Stages that run together, in order, in one actor pool with one set of resources."""

    name: str
    resources: Resources
    stages: tuple[StageDef, ...]

    @property
    def models(self) -> list[str]:
        return [s.model for s in self.stages if s.model]


# Each stage's module is imported when the stage is made: an actor then loads only the
# libraries of its own group (importing all of torch, transformers, open_clip and
# segment-anything takes ~9 s of CPU per process, once per actor and run).


def _prepare(spec: JobSpec, root: str, inputs: dict[str, Any]) -> Stage:
    from .prepare import PrepareImageStage
    clip = {**inputs["clip"], "framing": spec.invert.framing}
    return PrepareImageStage(clip, inputs.get("detector"), inputs.get("sam"))


def _prepare_masks(spec: JobSpec, root: str, inputs: dict[str, Any]) -> Stage:
    from .prepare import PrepareMaskStage
    return PrepareMaskStage({**inputs["clip"], "framing": spec.invert.framing})


def _decode(spec: JobSpec, root: str, _: Any) -> Stage:
    from .decode import DecodeStage
    return DecodeStage(spec.decode, root)


def _detect(spec: JobSpec, root: str, built: Any) -> Stage:
    from .detect import DetectStage
    return DetectStage(*built, top_k=spec.detect.top_k, precision=spec.detect.precision,
                       selection=spec.detect.selection)


def _segment(spec: JobSpec, root: str, sam: Any) -> Stage:
    from .segment import SegmentStage
    return SegmentStage(sam, image_batch=spec.segment.resources.batch_size, precision=spec.segment.precision)


def _boxes(*_: Any) -> Stage:
    from .masks import BoxMaskStage
    return BoxMaskStage()


def _tiles(*_: Any) -> Stage:
    from .masks import TileMaskStage
    return TileMaskStage()


def _background(*_: Any) -> Stage:
    from .background import BackgroundStage
    return BackgroundStage()


def _filter(spec: JobSpec, *_: Any) -> Stage:
    from .filter import FilterStage
    return FilterStage(spec.filter)


def _invert(spec: JobSpec, root: str, clip: Any) -> Stage:
    from .invert import InvertStage
    return InvertStage(clip, spec.invert, patch_grid=spec.write.patch_grid)


DECODE = StageDef("decode", None, _decode)
PREPARE = StageDef("prepare", None, _prepare, inputs=("detector", "sam", "clip"))
PREPARE_MASKS = StageDef("prepare_masks", None, _prepare_masks, inputs=("clip",))
DETECT = StageDef("detect", "detector", _detect)
SEGMENT = StageDef("segment", "sam", _segment)
BOXES = StageDef("boxes", None, _boxes)
TILES = StageDef("tiles", None, _tiles)
BACKGROUND = StageDef("background", None, _background)
FILTER = StageDef("filter", None, _filter)
INVERT = StageDef("invert", "clip", _invert)

#: Where a job spec names each model: its section, and the key of that section naming the
#: architecture variant (SAM's model_type, the open_clip model name).
MODEL_SECTIONS: dict[str, tuple[str, str | None]] = {
    "detector": ("detect", None), "sam": ("segment", "model_type"), "clip": ("invert", "model")}


def topology(spec: JobSpec) -> list[Group]:
    """The groups of this job, in pipeline order."""
    source = spec.masks.source
    groups = [Group("decode", spec.decode.resources, (DECODE, PREPARE))]
    if source != "tiles":
        groups.append(Group("detect", spec.detect.resources, (DETECT,)))
    if source == "sam":
        groups.append(Group("segment", spec.segment.resources, (SEGMENT,)))
    first = {"sam": (), "boxes": (BOXES,), "tiles": (TILES,)}[source]
    groups.append(Group("filter", spec.filter.resources, (*first, BACKGROUND, FILTER, PREPARE_MASKS)))
    groups.append(Group("invert", spec.invert.resources, (INVERT,)))
    return groups


def models_of(groups: list[Group]) -> list[str]:
    """The models these groups run, in pipeline order."""
    return [model for group in groups for model in group.models]


def models_needed(spec: JobSpec) -> list[str]:
    """The models this job runs, in pipeline order."""
    return models_of(topology(spec))


def model_checkpoint(spec: JobSpec, model: str) -> str:
    """The checkpoint the spec gives for ``model`` (a path or "tiny")."""
    return getattr(spec, MODEL_SECTIONS[model][0]).checkpoint


def model_variant(spec: JobSpec, model: str) -> str | None:
    """The architecture variant the spec gives for ``model``, if it has variants."""
    section, key = MODEL_SECTIONS[model]
    return getattr(getattr(spec, section), key) if key else None


def build_group(spec: JobSpec, group: Group, image_root: str | Path, checkpoints: dict[str, str],
                device: str | None = None) -> list[tuple[str, Stage]]:
    """(name, stage) of each stage of ``group``, its models loaded from ``checkpoints`` onto
    ``device`` (default: CUDA when available). ``checkpoints`` names the models the job runs
    (checkpoints.resolve_checkpoints, resolved paths): the CPU stages prepare inputs for those."""
    built = {m: load_model(m, checkpoints[m], variant=model_variant(spec, m), device=device) for m in group.models}
    wanted = {m for s in group.stages for m in s.inputs} & set(checkpoints)
    inputs = {m: load_inputs(m, checkpoints[m], variant=model_variant(spec, m)) for m in wanted}
    return [(s.name, s.make(spec, str(image_root), inputs if s.inputs else built.get(s.model)))
            for s in group.stages]


def front_stages(spec: JobSpec, image_root: str | Path, checkpoints: dict[str, str],
                 device: str | None = None) -> list[Stage]:
    """The stages from decode to filter (every group but invert), in process, no Ray."""
    return [stage for group in topology(spec)[:-1]
            for _, stage in build_group(spec, group, image_root, checkpoints, device)]


def run_stages(stages: list[Stage], batch: Batch) -> Batch:
    """Apply ``stages`` in order to one batch."""
    for stage in stages:
        batch = stage(batch)
    return batch
