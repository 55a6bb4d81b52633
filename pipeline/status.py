"""`masktok status` and `masktok verify`: what a job has done, and whether it is intact.

Also the one way a rate and seconds per image are written for people (:func:`format_rate`,
:func:`format_seconds`): the run summary, the status lines and the report all use it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..schemas.commits import STAGE_SECONDS, read_commits, stage_seconds_per_image, valid_commits
from ..schemas.failures import RESOURCE, count_by_kind
from ..schemas.jobdir import JobDir
from ..schemas.manifest import read_manifest
from ..schemas.record import Status
from ..schemas.storage import open_zarr
from .commit import verify_shard
from .lock import lock_holder
from .room import retry_advice

RATE_WINDOW = 20  # commits


def format_seconds(seconds: float) -> str:
    """Seconds with the digits that matter: 200, 20.5, 3.21, 0.100, 0.0123."""
    if seconds >= 100:
        return f"{seconds:.0f}"
    if seconds >= 10:
        return f"{seconds:.1f}"
    return f"{seconds:.2f}" if seconds >= 1 else f"{seconds:#.3g}"


def format_rate(images_per_s: float | None) -> str:
    """A throughput as people read it: "3.20 images/s" from 1 image/s up, "200 s/image"
    below (a slow run's 0.005 images/s says nothing at a glance); "n/a" when unknown."""
    if not images_per_s or images_per_s <= 0:
        return "n/a"
    if images_per_s >= 1:
        return f"{images_per_s:.2f} images/s"
    return f"{format_seconds(1 / images_per_s)} s/image"


def slowest_stage(per_image: dict[str, float]) -> str | None:
    """The stage with the most seconds per image (the one to give more actors), if any."""
    return max(per_image, key=per_image.__getitem__) if per_image else None


def stage_breakdown(per_image: dict[str, float]) -> str:
    """Every stage's seconds per image, in pipeline order, on one line."""
    return ", ".join(f"{name} {format_seconds(s)}" for name, s in per_image.items()) + " s/image"


def _significant(value: float, digits: int = 4) -> float:
    """Rounded to significant digits, not decimals: 0.0004 images/s must not become 0."""
    return float(f"{value:.{digits}g}")


def job_status(jd: JobDir) -> dict[str, Any]:
    """Counts, throughput, ETA and each stage's mean seconds per image (``stage_seconds``,
    over the ``stage_seconds_images`` images of the commits that record them) of a job, from
    its manifest and commit files alone. ``images_failed_by_kind`` splits the failures by
    kind (schemas/failures.py); ``retry`` is the line that says how to redo the resource
    failures (pipeline/room.py), null without any."""
    shards = read_manifest(jd.manifest, columns=["shard"]).column("shard").to_pylist()
    total, shards_total = len(shards), (max(shards) + 1 if shards else 0)
    commits = valid_commits(jd)
    ok = sum(c["images_ok"] for c in commits.values())
    failed = sum(c["images_failed"] for c in commits.values())
    times = sorted((datetime.fromisoformat(c["committed_at"]), c["rows"][1] - c["rows"][0]) for c in commits.values())
    recent = times[-RATE_WINDOW:]  # the current pace, not diluted by the pauses of a resumed job
    rate = None
    if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
        rate = sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0]).total_seconds()
    pending = total - ok - failed
    running = lock_holder(jd.run_lock)
    per_image, timed = stage_seconds_per_image(commits.values())
    failures = [f for c in commits.values() for f in c["failures"]]
    by_kind = count_by_kind(failures)
    pools = last_pools(jd)
    return {
        "images_total": total, "images_done": ok, "images_failed": failed, "images_failed_by_kind": by_kind,
        "retry": _retry(jd, failures) if by_kind[RESOURCE] else None, "images_pending": pending,
        "shards_total": shards_total, "shards_committed": len(commits), "shards_pending": shards_total - len(commits),
        "images_per_s": _significant(rate) if rate else None,
        "eta_s": round(pending / rate) if rate and pending else (0 if not pending else None),
        "running": running,
        STAGE_SECONDS: {name: _significant(s) for name, s in per_image.items()},
        "stage_seconds_images": timed,
        # the running or last run's cluster and pools ({group: {"actors", "gpus", "cpus"}}), if any ran
        "cluster": pools.get("cluster"), "pools": pools.get("pools"), "pools_line": pools.get("line"),
    }


def _retry(jd: JobDir, failures: list[dict[str, Any]]) -> str | None:
    """The retry line for the resource failures among ``failures``, with the planned spec's settings."""
    from ..schemas.spec import read_toml, spec_from_dict

    return retry_advice(str(jd.root), spec_from_dict(read_toml(jd.job_toml), origin=str(jd.job_toml)), failures)


def failed_count(s: dict[str, Any]) -> str:
    """"3 failed", or "3 failed (1 for lack of resources)" when some were the run's, not the image's."""
    resource = s.get("images_failed_by_kind", {}).get(RESOURCE, 0)
    return f"{s['images_failed']:,} failed" + (f" ({resource:,} for lack of resources)" if resource else "")


def last_pools(jd: JobDir) -> dict[str, Any]:
    """What ``pools.json`` holds (pipeline/pools.py), or {} before any run (or if unreadable)."""
    try:
        return json.loads(jd.pools.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def status_lines(s: dict[str, Any]) -> list[str]:
    """`masktok status` for people, from :func:`job_status`."""
    lines = [f"images  {s['images_done']:,} done, {failed_count(s)}, {s['images_pending']:,} pending "
             f"of {s['images_total']:,}",
             f"shards  {s['shards_committed']:,} committed of {s['shards_total']:,}"]
    if s.get("retry"):
        lines.append(f"retry   {s['retry']}")
    if s["images_per_s"]:
        eta = f", ETA {s['eta_s'] / 3600:.1f} h" if s["eta_s"] else ""
        lines.append(f"speed   {format_rate(s['images_per_s'])} (from commit times){eta}")
    slowest = slowest_stage(s[STAGE_SECONDS])
    if slowest:
        lines.append(f"stages  slowest: {slowest}, {format_seconds(s[STAGE_SECONDS][slowest])} s/image "
                     f"({stage_breakdown(s[STAGE_SECONDS])}; per actor, over {s['stage_seconds_images']:,} images)")
    if s.get("pools_line"):
        lines.append(f"pools   {s['pools_line']} ({'this' if s['running'] else 'the last'} run)")
    if s["running"] is not None:
        lines.append(f"run     running: pid {s['running'].get('pid')} on {s['running'].get('host')} "
                     f"since {s['running'].get('since')}")
    return lines


def pending_shards(jd: JobDir) -> tuple[list[int], int]:
    """The manifest's shards that have no commit file yet (in order), and the number of shards.

    An unreadable commit file counts as present here: :func:`verify_job` reports it as bad."""
    shards = read_manifest(jd.manifest, columns=["shard"]).column("shard").to_pylist()
    total = max(shards) + 1 if shards else 0
    committed = read_commits(jd)
    return [shard for shard in range(total) if shard not in committed], total


def verify_job(jd: JobDir, repair: bool = False) -> dict[int, list[str]]:
    """Problems of every committed shard; with ``repair``, bad shards lose their commit."""
    commits = read_commits(jd)
    if not commits:
        return {}
    if not (jd.tokens / "zarr.json").exists():
        bad = {shard: [f"{jd.tokens} is missing"] for shard in sorted(commits)}
        if repair:
            for shard in bad:
                jd.commit_path(shard).unlink()
        return bad
    group = open_zarr(jd.tokens, mode="r+" if repair else "r")
    bad = {}
    for shard, commit in sorted(commits.items()):
        problems = verify_shard(jd, group, commit)
        if problems:
            bad[shard] = problems
            if repair:
                jd.commit_path(shard).unlink()  # uncommitted first, then the rows marked pending
                if "unreadable" not in commit:
                    start, end = commit["rows"]
                    group["status"][start:end] = Status.PENDING
    return bad
