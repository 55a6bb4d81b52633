"""The failure record: why an image of a job has no tokens, and whose fault it is.

A failure record (a commit's ``failures``, a row of ``failures.parquet``, an item's
``error``) holds ``stage``, ``reason`` and ``kind``:

* ``image``: the image's fault (undecodable, truncated, too many pixels, outside the image
  root, unusable by a stage). Running again gives the same failure.
* ``resource``: the run's, not the image's: the image ran out of device or host memory
  alone in a batch, after the retries in halves (stages/chain.call_stage), or a stage timed
  out. It never stops the job; ``masktok run --retry-failed`` redoes it, with a ``--set``
  that gives its stage more room (pipeline/room.py).

Records written before kinds existed have no ``kind``: they read as ``image`` (what every
failure then was recorded as). A resource failure's reason starts with ``out of <what>``
(:func:`resource_reason`), so that what ran out is known to the readers without a column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

IMAGE = "image"
RESOURCE = "resource"
KINDS = (IMAGE, RESOURCE)
#: The kind of a record without one (written before kinds existed).
DEFAULT_KIND = IMAGE

#: What a resource failure ran out of (the start of its reason: "out of <what>").
DEVICE_MEMORY = "device memory"
HOST_MEMORY = "host memory"
TIME = "time"
RESOURCES = (DEVICE_MEMORY, HOST_MEMORY, TIME)


def kind_of(failure: Mapping[str, Any]) -> str:
    """The kind of a failure record (:data:`DEFAULT_KIND` for one written before kinds)."""
    return failure.get("kind") or DEFAULT_KIND


def count_by_kind(failures: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many of ``failures`` are of each kind (every kind present, 0 if none)."""
    counts = dict.fromkeys(KINDS, 0)
    for failure in failures:
        counts[kind_of(failure)] = counts.get(kind_of(failure), 0) + 1
    return counts


def resource_reason(resource: str, detail: str) -> str:
    """The reason of a resource failure: what ran out, then the exception's line."""
    return f"out of {resource} (alone in a batch): {detail}"


def resource_of(failure: Mapping[str, Any]) -> str | None:
    """What a resource failure ran out of (one of :data:`RESOURCES`); None for an image's
    failure or a reason that does not say."""
    if kind_of(failure) != RESOURCE:
        return None
    return next((r for r in RESOURCES if str(failure.get("reason", "")).startswith(f"out of {r} ")), None)
