"""`masktok status` and `masktok verify`: what a job has done, and whether it is intact."""

from __future__ import annotations

import json
import socket
from datetime import datetime
from typing import Any

import zarr

from ..schemas.manifest import read_manifest
from .commit import commit_path, read_commits, verify_shard
from .jobdir import JobDir
from .lock import pid_alive


def job_status(jd: JobDir) -> dict[str, Any]:
    """Counts, throughput and ETA of a job, from its manifest and commit files alone."""
    shards = read_manifest(jd.manifest, columns=["shard"]).column("shard").to_pylist()
    total, shards_total = len(shards), (max(shards) + 1 if shards else 0)
    commits = read_commits(jd)
    ok = sum(c["images_ok"] for c in commits.values())
    failed = sum(c["images_failed"] for c in commits.values())
    times = sorted((datetime.fromisoformat(c["committed_at"]), c["rows"][1] - c["rows"][0]) for c in commits.values())
    rate = None
    if len(times) >= 2 and times[-1][0] > times[0][0]:
        # images committed after the first commit, over the time since it
        rate = sum(n for _, n in times[1:]) / (times[-1][0] - times[0][0]).total_seconds()
    pending = total - ok - failed
    lock = jd.root / "run.lock"
    running = None
    if lock.exists():
        owner = json.loads(lock.read_text() or "{}")
        alive = owner.get("host") != socket.gethostname() or pid_alive(int(owner.get("pid", -1)))
        running = {**owner, "alive": alive}
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
    group = zarr.open_group(jd.tokens, mode="r")
    bad = {}
    for shard, commit in sorted(commits.items()):
        problems = verify_shard(jd, group, commit)
        if problems:
            bad[shard] = problems
            if repair:
                commit_path(jd, shard).unlink()
    return bad
