"""Progress of `masktok run` off a terminal: one plain line per commit.

Under nohup or a batch scheduler (stderr is not a TTY) a redrawn bar fills the log with
carriage returns; there the run writes, once per committed shard,

    shard 17: 1000 images (3 failed: decode 2, invert 1), 9.40 images/s, ETA 16.2 h, slowest invert 0.410 s/image

(the rate is this run's: images the writers received over its seconds; the ETA is the
images left of this run at that rate; the slowest stage is that shard's, per actor).
In a terminal the run keeps its tqdm bar (pipeline/run.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..schemas.commits import STAGE_SECONDS
from .status import format_rate, format_seconds, slowest_stage


def format_duration(seconds: float) -> str:
    """16.2 h, 12.5 min, 40 s."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def commit_line(commit: dict[str, Any], images_done: int, images_total: int, seconds: float) -> str:
    """The line of one commit; ``images_done`` of ``images_total`` this run has in ``seconds``."""
    start, end = commit["rows"]
    text = f"shard {commit['shard']}: {end - start} images"
    if commit["images_failed"]:
        stages = Counter(f.get("stage", "?") for f in commit.get("failures", []))
        text += f" ({commit['images_failed']} failed: {', '.join(f'{s} {n}' for s, n in stages.most_common())})"
    rate = images_done / seconds if seconds > 0 else None
    text += f", {format_rate(rate)}"
    if rate:
        text += f", ETA {format_duration(max(0, images_total - images_done) / rate)}"
    timed, n = commit.get(STAGE_SECONDS), commit.get("images")
    slowest = slowest_stage(timed) if timed and n else None
    if slowest:
        text += f", slowest {slowest} {format_seconds(timed[slowest] / n)} s/image"
    return text


class CommitLines:
    """A ``show`` callback for writers.coordinate: ``echo`` one line per new commit."""

    def __init__(self, images_total: int, echo: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.images_total, self.echo, self.clock = images_total, echo, clock
        self.start = clock()
        self.seen = 0

    def __call__(self, books: Any) -> None:
        for commit in books.committed[self.seen:]:
            self.echo(commit_line(commit, books.images, self.images_total, self.clock() - self.start))
        self.seen = len(books.committed)
