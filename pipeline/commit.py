"""Write and verify shards: the rule that makes a job resumable.

A shard counts as done only when ``commits/shard-NNNNNN.json`` exists. Everything the
shard writes (its Zarr chunks, its tar) is written and fsynced first; the commit file is
written last, atomically. So a run killed at any moment leaves every shard either
committed and whole, or uncommitted (and redone by the next run).

The commit file records the row range, counts, the failures, and a SHA-256 of every
array slice and of the tar, which `masktok verify` recomputes from what is on disk. It also
records the wall seconds each stage spent on the shard's images (``stage_seconds``, summed
from the items' shares, pipeline/graph.py, over ``images`` items): `masktok status` and the
report turn them into seconds per image. Verify ignores them (they are no result).
Reading commit files is schemas/commits.py (readers need it without the writers).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..schemas.commits import STAGE_SECONDS, Commit, add_stage_seconds
from ..schemas.jobdir import JobDir
from ..schemas.record import Status, arrays_of
from ..schemas.versions import COMMIT_VERSION
from ..schemas.storage import is_remote
from ..stages.write import (TokenDims, checksum, encode_wds_shard, failures_of, shard_rows, store_patch_grid,
                            store_version, write_zarr_rows)
from ..schemas.durable import fsync_dir, write_atomic


def _fsync_chunks(group_path: Path, shard: int, names: list[str]) -> None:
    """Flush this shard's files of ``names`` (key c/<shard>/...: the shard file of a sharded
    array, the chunk of an older store; the index along N is the shard's in both), and their folders.
    On object storage a write is durable once its PUT returns: nothing to do."""
    if is_remote(group_path):
        return
    for name in names:
        root = group_path / name / "c" / str(shard)
        if root.is_file():
            files, folders = [root], [root.parent]
        else:
            walked = list(os.walk(root))
            files = [Path(d) / f for d, _, fs in walked for f in fs]
            folders = [root.parent] + [Path(d) for d, _, _ in walked]
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for folder in folders:
            if folder.is_dir():  # an array whose rows are all fill values has no file to sync
                fsync_dir(folder)


def shard_timing(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The commit keys of stage timing: ``stage_seconds`` summed over the items that carry
    it (6 significant digits) and ``images``, how many those are; none if no item does
    (a shard written outside a Ray run)."""
    timed = [item[STAGE_SECONDS] for item in items if item.get(STAGE_SECONDS)]
    if not timed:
        return {}
    total: dict[str, float] = {}
    for seconds in timed:
        add_stage_seconds(total, seconds)
    return {STAGE_SECONDS: {name: float(f"{s:.6g}") for name, s in total.items()}, "images": len(timed)}


def write_shard(jd: JobDir, group: zarr.Group, shard: int, start: int, end: int, items: list[dict[str, Any]],
                dims: TokenDims, fingerprint: str, webdataset: bool = True, rle_masks: bool = False,
                manifest_digest: str | None = None, fence: Callable[[], None] | None = None) -> Commit:
    """Write one finished shard to both sinks, then commit it. Returns the commit record.

    ``fence``, if given, is called right before each of the three writes (the Zarr rows, the
    tar, the commit) and raises to stop a writer whose run no longer holds the job
    (pipeline/lock.check_holder): a writer paused for longer than its run's hold on the job
    writes nothing after another run has taken the job over. What it cannot stop is the one
    write under way when it was paused (a check passed, the write not yet done)."""
    fence = fence or (lambda: None)
    rows = shard_rows(items, start, end, dims, store_version(group), store_patch_grid(group))
    fence()
    sums = write_zarr_rows(group, start, rows, flush=lambda names: _fsync_chunks(jd.tokens, shard, names))
    tar = None
    if webdataset:
        data = encode_wds_shard(items, start, rows, rle_masks)
        fence()
        write_atomic(jd.wds_path(shard), data)
        fsync_dir(jd.wds)
        tar = {"file": jd.wds_path(shard).name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    failures = failures_of(items)
    commit = {
        "version": COMMIT_VERSION, "shard": shard, "rows": [start, end],
        "fingerprint": fingerprint, "manifest_digest": manifest_digest,
        "images_ok": int((rows["status"] == Status.OK).sum()), "images_failed": len(failures),
        "failures": failures, "zarr": sums, "wds": tar, **shard_timing(items),
        "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    fence()
    write_atomic(jd.commit_path(shard), json.dumps(commit, indent=1).encode())
    fsync_dir(jd.commits)
    return commit


def verify_shard(jd: JobDir, group: zarr.Group, commit: Commit) -> list[str]:
    """What is wrong with a committed shard on disk (empty list: it matches its commit)."""
    if "unreadable" in commit:
        return [commit["unreadable"]]
    start, end = commit["rows"]
    problems = []
    rows = {}
    for spec in arrays_of(store_version(group), store_patch_grid(group)):
        try:
            rows[spec.name] = group[spec.name][start:end]
        except Exception as exc:  # a corrupt chunk fails to decompress
            problems.append(f"{spec.name}: unreadable ({type(exc).__name__}: {exc})")
            continue
        if checksum(rows[spec.name]) != commit["zarr"].get(spec.name):
            problems.append(f"{spec.name}: checksum differs from the commit")
    if "status" in rows:
        ok = rows["status"] == Status.OK
        if int(ok.sum()) != commit["images_ok"] or int((rows["status"] == Status.FAILED).sum()) != commit["images_failed"]:
            problems.append("status counts differ from the commit")
        for name, values in rows.items():
            if values.dtype.kind == "f" and not np.isfinite(values[ok]).all():
                problems.append(f"{name}: non-finite values")
    if commit.get("wds"):
        path = jd.wds / commit["wds"]["file"]
        if not path.exists():
            problems.append(f"{path.name}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != commit["wds"]["sha256"]:
            problems.append(f"{path.name}: checksum differs from the commit")
    return problems
