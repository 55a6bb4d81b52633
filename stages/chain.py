"""The stage chain in one process: how a group's stages are called on a batch, by a Ray
actor of a job (pipeline/graph.py) and by ``masktok ask`` (inference/ask.py) alike.

:func:`call_stage` is the per-batch error handling: an exception that escapes a stage for a
whole batch is retried item by item, an item that still raises becomes a failure of that
stage, and running out of (GPU or host) memory retries smaller batches instead; an image that
alone still runs out is a resource failure (schemas/failures.py), never the end of the run. :func:`timed_stage`
adds each item's share of the call's seconds; :func:`run_chain` pushes a batch through a
list of (name, stage); :func:`build_chain` builds every group of a spec's topology here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..schemas.commits import STAGE_SECONDS
from ..schemas.spec import JobSpec
from .batch import fail_for, failed, out_of_memory
from .topology import Stage, build_group, topology

Item = dict[str, Any]


def call_stage(name: str, stage: Callable[[list[Item]], list[Item]], items: list[Item]) -> list[Item]:
    """Run a stage on a batch; on an exception, item by item, recording what still fails.

    Stages update items in place (background appends a row), so a retry starts from copies
    taken before the call. Running out of (GPU or host) memory is not a property of an
    image: the batch is retried in halves, down to one image; an image that alone still runs
    out is recorded as a failure of kind ``resource`` (so is a timeout), which
    ``masktok run --retry-failed`` redoes; the run goes on.
    """
    before = [dict(item) for item in items]
    try:
        return stage(items)
    except Exception as exc:  # noqa: BLE001 - isolate the bad image below
        if out_of_memory(exc):
            if len(before) == 1:
                return [fail_for(before[0], name, exc)]
            half = len(before) // 2
            return call_stage(name, stage, before[:half]) + call_stage(name, stage, before[half:])
    out = []
    for item in before:
        if failed(item):
            out.append(item)
            continue
        try:
            out.extend(stage([item]))
        except Exception as exc:  # noqa: BLE001 - a per-image failure, recorded with its kind
            out.append(fail_for(item, name, exc))
    return out


def timed_stage(name: str, stage: Callable[[list[Item]], list[Item]], items: list[Item]) -> list[Item]:
    """:func:`call_stage`, adding to each item its share of the call's wall seconds
    (batch seconds / batch size, item-by-item retries included) under ``STAGE_SECONDS``."""
    start = time.perf_counter()
    items = call_stage(name, stage, items)
    share = (time.perf_counter() - start) / max(1, len(items))
    for item in items:
        seconds = item.setdefault(STAGE_SECONDS, {})
        seconds[name] = seconds.get(name, 0.0) + share
    return items


def run_chain(stages: list[tuple[str, Stage]], items: list[Item]) -> list[Item]:
    """Apply each (name, stage) in order through :func:`timed_stage`."""
    for name, stage in stages:
        items = timed_stage(name, stage, items)
    return items


def build_chain(spec: JobSpec, image_root: str | Path, checkpoints: dict[str, str],
                device: str | None = None) -> list[tuple[str, Stage]]:
    """(name, stage) of every stage of every group of ``spec``, built in this process (each
    model loaded once, from ``checkpoints``: checkpoints.resolve_checkpoints)."""
    return [pair for group in topology(spec) for pair in build_group(spec, group, image_root, checkpoints, device)]
