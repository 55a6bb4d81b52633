"""What gives a stage more room: the ``--set`` settings named to the user when images of a
job failed for lack of resources (schemas/failures.py), for ``masktok run --retry-failed``.

Only ``<group>.resources`` settings are named: they change how a job runs, never its results,
so a planned job takes them (pipeline/run.load_job). An image that ran out of memory alone
in a batch was already retried at one image per call (stages/chain.call_stage); these
settings change what was around it (masktok's choice, by what ran out):

* device memory: ``batch_size=1`` (every call holds one image from the start, so no larger
  batch's blocks are cached around it) and ``gpus=1`` when the group shares a GPU (its actor
  then has one to itself);
* host memory: ``batch_size=1`` and ``memory_gb`` twice the group's declaration (16 GB if it
  declared none): Ray then puts fewer of its actors on one node;
* time: nothing to set; running again is the retry.

A setting already at that value is not named; when none is left, the advice says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..schemas.failures import DEVICE_MEMORY, HOST_MEMORY, RESOURCE, TIME, kind_of, resource_of
from ..schemas.spec import JobSpec
from ..stages.topology import Group, topology

#: memory_gb named for a group that declared none (GB)
DEFAULT_MEMORY_GB = 16.0


def group_of(spec: JobSpec, stage: str) -> Group | None:
    """The group of ``spec``'s topology that runs ``stage`` (by its failure name)."""
    return next((g for g in topology(spec) if any(s.name == stage for s in g.stages)), None)


def more_room(spec: JobSpec, failure: Mapping[str, Any]) -> list[str]:
    """The ``KEY=VALUE`` settings that give the stage of a resource failure more room (none:
    no setting would; an image's failure: none)."""
    resource = resource_of(failure)
    group = group_of(spec, str(failure.get("stage")))
    if resource not in (DEVICE_MEMORY, HOST_MEMORY) or group is None:
        return []
    res, key = group.resources, f"{group.name}.resources"
    out = [f"{key}.batch_size=1"] if res.batch_size > 1 else []
    if resource == DEVICE_MEMORY and 0 < res.gpus < 1:
        out.append(f"{key}.gpus=1")
    if resource == HOST_MEMORY:
        out.append(f"{key}.memory_gb={2 * res.memory_gb if res.memory_gb else DEFAULT_MEMORY_GB:g}")
    return out


def retry_advice(jobdir: str, spec: JobSpec, failures: Iterable[Mapping[str, Any]]) -> str | None:
    """One line for the resource failures among ``failures`` (None if there are none): how
    many, and the command that redoes them with more room."""
    resource = [f for f in failures if kind_of(f) == RESOURCE]
    if not resource:
        return None
    settings = list(dict.fromkeys(s for f in resource for s in more_room(spec, f)))
    command = " ".join(["masktok run", str(jobdir), "--retry-failed", *(f"--set {s}" for s in settings)])
    if settings:
        room = ""
    elif all(resource_of(f) == TIME for f in resource):
        room = " (they timed out: running again is the retry)"
    else:
        room = " (no setting of the spec gives their stage more room: run it on a machine with more memory)"
    what = sorted({resource_of(f) or "resources" for f in resource})
    return (f"{len(resource)} image(s) failed for lack of {', '.join(what)}, not for being bad: "
            f"`{command}` redoes them{room}")
