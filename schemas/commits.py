"""Reading the commit files of a job: which shards are done (docs/jobdir.md, "commits/").

A shard counts as done only when ``commits/shard-NNNNNN.json`` exists and is readable; it
records the row range, counts, the failures, and a SHA-256 of every array slice and of
the tar. pipeline/commit.py writes and verifies them; readers (the trainer, the views,
``masktok status``) only need what is here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .jobdir import JobDir

Commit = dict[str, Any]

#: Wall seconds per stage: an item's share of each batched stage call (pipeline/graph.py),
#: and in a commit file the sum over the shard's items, next to ``images``, how many items
#: that sum covers. Commits written before stage timing existed have neither key.
STAGE_SECONDS = "stage_seconds"


def read_commits(jd: JobDir) -> dict[int, Commit]:
    """Every commit file of the job, by shard (temp files of an interrupted write ignored).

    An unreadable commit file (a flipped byte, a truncated copy) is returned as
    ``{"unreadable": reason}`` under the shard its name gives: it is not a valid commit.
    """
    if not jd.commits.is_dir():
        return {}
    out: dict[int, Commit] = {}
    for path in sorted(jd.commits.glob("shard-*.json")):
        shard = int(path.stem.removeprefix("shard-")) if path.stem.removeprefix("shard-").isdigit() else -1
        try:
            commit = json.loads(path.read_text())
            if commit["shard"] != shard or len(commit["rows"]) != 2:
                raise ValueError("its content names another shard")
        except (ValueError, KeyError, TypeError) as exc:
            out[shard] = {"unreadable": f"{path.name}: unreadable commit file ({type(exc).__name__}: {exc})"}
            continue
        out[shard] = commit
    return out


def valid_commits(jd: JobDir) -> dict[int, Commit]:
    """The readable commits only."""
    return {s: c for s, c in read_commits(jd).items() if "unreadable" not in c}


def add_stage_seconds(total: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """Add ``more`` into ``total`` stage by stage (first-seen order: pipeline order); returns ``total``."""
    for name, seconds in more.items():
        total[name] = total.get(name, 0.0) + float(seconds)
    return total


def stage_seconds_per_image(commits: Iterable[Commit]) -> tuple[dict[str, float], int]:
    """Mean wall seconds per image of each stage, and the images they are a mean over.

    Summed seconds over summed images of the commits that record stage timing; the others
    (written before it existed, or outside a run) are skipped, not counted as zero.
    """
    seconds: dict[str, float] = {}
    images: dict[str, int] = {}
    timed = 0
    for commit in commits:
        stages, n = commit.get(STAGE_SECONDS), commit.get("images")
        if not stages or not n:
            continue
        timed += n
        add_stage_seconds(seconds, stages)
        for name in stages:
            images[name] = images.get(name, 0) + n
    return {name: seconds[name] / images[name] for name in seconds}, timed
