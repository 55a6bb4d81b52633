"""The Ray Data execution graph: stages wrapped as actor pools, one operator per group.

Ray Data moves each image as one pickled item (a dict of the batch contract in
``masktok.stages``) in a binary column, so ragged arrays and RLE masks need no schema.
The operators and their resources come from the spec:

    decode           [decode.resources]
    detect | tiles   [detect.resources]
    segment | boxes  + background + filter   [segment.resources]   (tiles: folded into detect)
    invert           [invert.resources]      (drops the image before the results travel)

An exception that escapes a stage for a whole batch is retried item by item; an item
that still raises becomes a failure of that stage, so one bad image never stops a job.
An actor that dies is restarted by Ray and its batch redone.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..schemas.spec import JobSpec, Resources
from ..stages.background import BackgroundStage
from ..stages.batch import exception_reason, fail, failed
from ..stages.decode import DecodeStage
from ..stages.detect import DetectStage
from ..stages.filter import FilterStage
from ..stages.invert import InvertStage
from ..stages.masks import BoxMaskStage, TileMaskStage
from ..stages.segment import SegmentStage

Item = dict[str, Any]
StageFactory = Callable[[], Callable[[list[Item]], list[Item]]]
RESULT_DROPS = ("image",)
_OUT_OF_MEMORY = (torch.cuda.OutOfMemoryError, MemoryError)  # what the writer does not need: never ship it back


@functools.lru_cache(maxsize=1)
def quiet_model_libraries() -> None:
    """Progress bars and notices of the model libraries are noise in a command's output
    (and in every worker's log)."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights" notice


def call_stage(name: str, stage: Callable[[list[Item]], list[Item]], items: list[Item]) -> list[Item]:
    """Run a stage on a batch; on an exception, item by item, recording what still fails.

    Stages update items in place (background appends a row), so the retry starts from
    copies taken before the batched call. Running out of GPU memory is not a property of
    an image: it is raised, not recorded as a failure.
    """
    before = [dict(item) for item in items]
    try:
        return stage(items)
    except _OUT_OF_MEMORY:
        raise
    except Exception:  # noqa: BLE001 - isolate the bad image below
        pass
    out = []
    for item in before:
        if failed(item):
            out.append(item)
            continue
        try:
            out.extend(stage([item]))
        except _OUT_OF_MEMORY:
            raise
        except Exception as exc:  # noqa: BLE001 - a per-image failure, recorded
            out.append(fail(item, name, exception_reason(exc)))
    return out


class StageGroup:
    """A Ray Data callable class: builds its stages once per actor, runs them in order."""

    def __init__(self, factories: list[tuple[str, StageFactory]], drop: tuple[str, ...] = ()):
        quiet_model_libraries()
        self.stages = [(name, make()) for name, make in factories]
        self.drop = drop

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(blob) for blob in batch["item"]]
        for name, stage in self.stages:
            items = call_stage(name, stage, items)
        for item in items:
            for key in self.drop:
                item.pop(key, None)
        return {"item": np.array([pickle.dumps(it, protocol=5) for it in items], dtype=object)}


def operator_groups(spec: JobSpec, image_root: str, checkpoints: dict[str, str]) -> list[tuple[str, Resources, list]]:
    """(name, resources, stage factories) of each Ray operator, in pipeline order."""
    P = functools.partial
    tail = [("background", BackgroundStage), ("filter", P(FilterStage, spec.filter))]
    groups: list[tuple[str, Resources, list]] = [
        ("decode", spec.decode.resources, [("decode", P(DecodeStage, spec.decode, image_root))])]
    if spec.masks.source == "tiles":
        groups.append(("tiles", spec.detect.resources, [("tiles", TileMaskStage), *tail]))
    else:
        groups.append(("detect", spec.detect.resources,
                       [("detect", P(DetectStage, spec.detect, checkpoints["detector"]))]))
        masks = (("segment", P(SegmentStage, spec.segment, checkpoints["sam"])) if spec.masks.source == "sam"
                 else ("boxes", BoxMaskStage))
        groups.append((masks[0], spec.segment.resources, [masks, *tail]))
    groups.append(("invert", spec.invert.resources, [("invert", P(InvertStage, spec.invert, checkpoints["clip"]))]))
    return groups


def build_dataset(spec: JobSpec, items: list[Item], image_root: str, checkpoints: dict[str, str]):
    """The lazy Ray Dataset that turns planned items into finished ones."""
    import ray.data

    # One image per block. Ray Data merges a task's output into blocks of up to
    # target_max_block_size bytes, and a downstream actor takes a whole block as one unit
    # of work: big blocks serialise the pipeline and hold results back until the end.
    ray.data.DataContext.get_current().target_max_block_size = 1
    ds = ray.data.from_items([{"item": pickle.dumps(it, protocol=5)} for it in items],
                             override_num_blocks=max(1, min(len(items), 256)))
    groups = operator_groups(spec, image_root, checkpoints)
    for i, (name, res, factories) in enumerate(groups):
        drop = RESULT_DROPS if i == len(groups) - 1 else ()
        ds = ds.map_batches(
            StageGroup, fn_constructor_args=(factories, drop), batch_size=res.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=res.actors), num_cpus=res.cpus, num_gpus=res.gpus,
            udf_modifying_row_count=False,  # actors restart and retry their batch: Ray Data's default
        )
    return ds
