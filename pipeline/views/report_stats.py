"""The numbers behind `masktok report`, gathered shard by shard so a 558K-image job fits in memory.

Only committed shards are read (a pending image has no results). Per-object quantities whose
range is known (dice loss, mask area as a fraction of the image) are accumulated as fixed-bin
histograms; per-image quantities (objects kept, patch-norm statistics) are kept whole
(a few MB for the largest corpora).

Mask area: from the RLE masks (``masks.json``) when the job stored them, read from at most
:data:`MAX_AREA_SHARDS` shards spread evenly over the job (reading every tar of a big job
would take longer than the report is worth); otherwise from the boxes (box area / image
area, an upper bound of the mask area). :attr:`JobStats.area_source` says which, and the
report prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from ...schemas.jobdir import JobDir
from ...schemas.record import Status
from ...schemas.storage import open_zarr
from .jobview import committed_rows, shard_tar

BINS = np.linspace(0.0, 1.0, 41)
MAX_AREA_SHARDS = 16


@dataclass
class JobStats:
    spec: Any
    meta: dict[str, Any]
    status: dict[str, Any]
    plan: dict[str, Any] | None
    commit_times: list[tuple[datetime, int]]  # (committed_at, images in the shard), sorted
    failures: list[dict[str, Any]]  # index, image_id, shard, stage, reason, kind (if recorded)
    objects_kept: list[int] = field(default_factory=list)  # per ok image, background not counted
    ok_indices: list[int] = field(default_factory=list)
    loss_kept: np.ndarray = field(default_factory=lambda: np.zeros(len(BINS) - 1, np.int64))
    loss_suppressed: np.ndarray = field(default_factory=lambda: np.zeros(len(BINS) - 1, np.int64))
    area: np.ndarray = field(default_factory=lambda: np.zeros(len(BINS) - 1, np.int64))
    area_source: str = ""
    patch_norm_mean: list[float] = field(default_factory=list)
    patch_norm_std: list[float] = field(default_factory=list)


def gather(jd: JobDir) -> JobStats:
    """Every number the report shows, for the job in ``jd``."""
    from ..run import load_job
    from ..status import job_status

    spec, meta = load_job(jd)
    commits = committed_rows(jd)
    plan = json.loads(jd.plan_report.read_text()) if jd.plan_report.exists() else None
    times = sorted((datetime.fromisoformat(c["committed_at"]), c["rows"][1] - c["rows"][0]) for c in commits.values())
    failures = [{**f, "shard": s} for s, c in sorted(commits.items()) for f in c["failures"]]
    stats = JobStats(spec=spec, meta=meta, status=job_status(jd), plan=plan, commit_times=times, failures=failures)
    group = open_zarr(jd.tokens, mode="r")
    use_rle = spec.write.rle_masks and spec.write.webdataset
    shards = sorted(commits)
    area_shards = set(shards[:: max(1, -(-len(shards) // MAX_AREA_SHARDS))]) if use_rle else set()
    area_images = 0
    for shard in shards:
        start, end = commits[shard]["rows"]
        rows = {n: group[n][start:end] for n in ("status", "num_objects", "keep_rank", "inversion_loss", "boxes",
                                                  "width", "height", "patch_norm_mean", "patch_norm_std")}
        area_images += _add_shard(stats, jd, shard, start, rows, rle=shard in area_shards, boxes=not use_rle)
    stats.area_source = (f"from the RLE masks (masks.json) of {area_images} images in {len(area_shards)} of "
                         f"{len(shards)} committed shards" if use_rle else
                         "from the boxes (this job stored no masks: write.rle_masks = false); "
                         "box area is an upper bound of mask area")
    return stats


def _add_shard(stats: JobStats, jd: JobDir, shard: int, start: int, rows: dict[str, np.ndarray],
               rle: bool, boxes: bool) -> int:
    """Fold one shard's rows into ``stats``; returns how many images gave RLE areas."""
    ok = np.flatnonzero(rows["status"] == Status.OK)
    masks = _shard_masks(jd, shard) if rle else {}
    for i in ok:
        k = int(rows["num_objects"][i])
        keep, loss = rows["keep_rank"][i, :k], rows["inversion_loss"][i, :k]
        stats.ok_indices.append(start + int(i))
        stats.objects_kept.append(int((keep[:-1] >= 0).sum()))
        stats.loss_kept += np.histogram(np.clip(loss[keep >= 0], 0, 1), BINS)[0]
        stats.loss_suppressed += np.histogram(np.clip(loss[keep < 0], 0, 1), BINS)[0]
        stats.patch_norm_mean.append(float(rows["patch_norm_mean"][i]))
        stats.patch_norm_std.append(float(rows["patch_norm_std"][i]))
        objects = np.flatnonzero(keep[:-1] >= 0)
        pixels = max(1, int(rows["width"][i]) * int(rows["height"][i]))
        if start + int(i) in masks:
            areas = _rle_areas([masks[start + int(i)][r] for r in objects])
            stats.area += np.histogram(np.clip(areas / pixels, 0, 1), BINS)[0]
        elif boxes:
            b = rows["boxes"][i, objects]
            stats.area += np.histogram(np.clip((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / pixels, 0, 1), BINS)[0]
    return sum(1 for i in ok if start + int(i) in masks)


def _shard_masks(jd: JobDir, shard: int) -> dict[int, list[dict]]:
    """masks.json of every sample of a shard's tar, by manifest index."""
    path, out = jd.wds_path(shard), {}
    if not path.exists():
        return out
    with shard_tar(jd, shard) as tar:
        for member in tar:
            if member.name.endswith(".masks.json"):
                out[int(member.name.split(".", 1)[0])] = json.loads(tar.extractfile(member).read())
    return out


def _rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel counts of COCO RLEs, without decoding them."""
    from pycocotools import mask as mask_utils

    from ...stages.batch import rle_from_json

    if not rles:
        return np.zeros(0)
    return np.asarray(mask_utils.area([rle_from_json(r) for r in rles]), dtype=np.float64)


def spec_highlights(spec: Any, meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings a reader of the report needs to judge the results."""
    return [
        ("job", f"{spec.job.name}: {spec.job.description}" if spec.job.description else spec.job.name),
        ("corpus", f"{spec.corpus.kind}: {spec.corpus.source}"),
        ("image root", spec.corpus.image_root),
        ("fingerprint", str(meta.get("fingerprint", "?"))),
        ("planned at", str(meta.get("planned_at", "?"))),
        ("mask source", spec.masks.source),
        ("detector", f"{spec.detect.checkpoint} (top_k {spec.detect.top_k})"),
        ("SAM", f"{spec.segment.checkpoint} ({spec.segment.model_type})"),
        ("filter", f"iou_threshold {spec.filter.iou_threshold}, max_objects {spec.filter.max_objects}"),
        ("CLIP", f"{spec.invert.model}: {spec.invert.checkpoint}"),
        ("MaskInversion", f"{spec.invert.iterations} iterations, lr {spec.invert.lr}, alpha {spec.invert.alpha}, "
                          f"layer_index {spec.invert.layer_index}, {spec.invert.precision}"),
        ("shard size", f"{spec.shards.size} images"),
        ("outputs", f"webdataset {spec.write.webdataset}, rle_masks {spec.write.rle_masks}"),
    ]
