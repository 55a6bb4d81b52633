"""`masktok status` and `masktok verify`: what a job has done, and whether it is intact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import zarr

from ..schemas.commits import read_commits, valid_commits
from ..schemas.jobdir import JobDir
from ..schemas.manifest import read_manifest
from ..schemas.record import Status
from .commit import verify_shard
from .lock import lock_holder

RATE_WINDOW = 20  # commits


def job_status(jd: JobDir) -> dict[str, Any]:
    """Counts, throughput and ETA of a job, from its manifest and commit files alone."""
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
    return {
        "images_total": total, "images_done": ok, "images_failed": failed, "images_pending": pending,
        "shards_total": shards_total, "shards_committed": len(commits), "shards_pending": shards_total - len(commits),
        "images_per_s": round(rate, 3) if rate else None,
        "eta_s": round(pending / rate) if rate and pending else (0 if not pending else None),
        "running": running,
    }


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
    group = zarr.open_group(jd.tokens, mode="r+" if repair else "r")
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
