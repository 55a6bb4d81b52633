"""`masktok report`: one self-contained HTML page about a job, for a browser with no server.

    masktok report JOBDIR [-o report.html] [--images N]

Sections: summary (spec highlights, counts from `masktok status`, fingerprint, plan counts),
throughput over time (from commit times) and each stage's seconds per image (from the commit
files, the numbers of `masktok status --json`), failures by stage and reason, distributions
(objects kept per image, inversion loss, mask area, patch-norm statistics) and N inspected
images drawn by `masktok inspect`'s renderer. Every image is an inline base64 PNG; the page
has inline CSS, no script and no external reference, so it can be mailed or archived as is.

Inspected images: the ok images with the most, the median and the fewest kept objects
(distinct ones, then the next ones in manifest order). They are drawn from stored masks;
when the job stored none they show boxes only (recomputing masks needs the detector and SAM:
use `masktok inspect`, which does). Only committed shards are read: a report on a running
job shows what is done so far.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report_html import Page


def pick_images(indices: list[int], kept: list[int], count: int) -> list[int]:
    """Up to ``count`` distinct manifest indices: most, median, fewest kept objects, then more."""
    if not indices or count <= 0:
        return []
    order = sorted(range(len(indices)), key=lambda i: (-kept[i], indices[i]))
    preferred = [order[0], order[len(order) // 2], order[-1]] + order
    chosen: list[int] = []
    for i in preferred:
        if indices[i] not in chosen:
            chosen.append(indices[i])
        if len(chosen) == count:
            break
    return chosen


def stage_rows(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(stage, seconds per image, share of the total) from `masktok status`'s ``stage_seconds``."""
    from ..status import format_seconds

    per_image = status["stage_seconds"]
    total = sum(per_image.values()) or 1.0
    return [(name, format_seconds(s), f"{100 * s / total:.0f} %") for name, s in per_image.items()]


def stage_table(page: Page, status: dict[str, Any]) -> None:
    """The table of each stage's seconds per image, or why there is none."""
    if not status["stage_seconds"]:
        page.paragraph("No committed shard records its stage times (committed before masktok timed stages).")
        return
    page.paragraph(f"Wall seconds per image inside each stage's actor, mean over {status['stage_seconds_images']:,} "
                   "images of the committed shards. To keep up with R images/s, a stage needs about "
                   "R × (seconds per image) actors.")
    page.table(["stage", "seconds per image", "share"], stage_rows(status))


def build_report(jobdir: Path, images: int = 3) -> str:
    """The HTML text of the report on the job in ``jobdir`` (a MasktokError for user errors)."""
    from collections import Counter
    from datetime import datetime, timezone

    from ...schemas.jobdir import JobDir
    from ...schemas.failures import kind_of
    from ..status import failed_count, format_rate
    from . import report_plots as plots
    from .inspect import inspect_image
    from .report_html import Page
    from .report_stats import gather, spec_highlights

    jd = JobDir(jobdir)
    stats = gather(jd)
    s = stats.status
    page = Page(f"masktok report: {stats.spec.job.name}",
                f"{jd.root.resolve()} · written {datetime.now(timezone.utc).isoformat(timespec='seconds')}")

    page.section("Summary")
    counts = [("images", f"{s['images_done']:,} done, {failed_count(s)}, {s['images_pending']:,} pending "
                         f"of {s['images_total']:,}"),
              ("shards", f"{s['shards_committed']:,} committed of {s['shards_total']:,}"),
              ("throughput", f"{format_rate(s['images_per_s'])} (from commit times)" if s["images_per_s"] else "n/a"),
              ("running", f"yes (pid {s['running'].get('pid')} on {s['running'].get('host')})" if s["running"] else "no")]
    page.table(["", ""], counts + spec_highlights(stats.spec, stats.meta), header=False)
    if stats.plan:
        keys = ("records_read", "text_only", "invalid", "rejected", "duplicate_references", "missing", "unique_images")
        page.paragraph("Planning: " + ", ".join(f"{k.replace('_', ' ')} {stats.plan[k]:,}" for k in keys
                                                if isinstance(stats.plan.get(k), int)))

    page.section("Throughput")
    page.image(plots.throughput(stats.commit_times), "images committed over time")
    stage_table(page, s)

    page.section("Failures")
    if not stats.failures:
        page.paragraph("No image failed.")
    else:
        if s.get("retry"):
            page.paragraph(s["retry"])
        groups = Counter((kind_of(f), f["stage"], f["reason"]) for f in stats.failures)
        rows = [(kind, stage, reason, str(n), ", ".join(f["image_id"] for f in stats.failures
                                                        if (kind_of(f), f["stage"], f["reason"]) == (kind, stage, reason))[:300])
                for (kind, stage, reason), n in groups.most_common()]
        page.table(["kind", "stage", "reason", "images", "examples"], rows)

    page.section("Distributions")
    page.image(plots.objects_kept(stats), "objects kept per image")
    page.image(plots.inversion_loss(stats), "inversion loss")
    page.paragraph(f"Mask area {stats.area_source}.")
    page.image(plots.mask_area(stats), "mask area")
    page.image(plots.patch_norms(stats), "patch-norm statistics")

    page.section("Inspected images")
    chosen = pick_images(stats.ok_indices, stats.objects_kept, images)
    page.paragraph("Drawn as `masktok inspect` draws them: a colour per kept object (label keep_rank · score), "
                   "suppressed boxes dashed grey, background hatched.")
    for index in chosen:
        png, _, line = inspect_image(jd.root, index=index, recompute=False)
        page.image(png, line)
    return page.html()
