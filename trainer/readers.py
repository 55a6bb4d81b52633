"""Readers of a finished job's cache: map-style over ``tokens.zarr``, streaming over ``wds/``.

Both yield the same per-image record (a dict), so the rest of the trainer never knows
which sink it reads:

    index, image_id, status, width, height, num_objects, patch_norm_mean, patch_norm_std
    object_tokens [k, D] f16, boxes [k, 4] f32, scores [k] f32, keep_rank [k] i16,
    inversion_loss [k] f32, global_token [D] f16, patch_tokens [36, C] f16

with k = num_objects (Zarr's padding rows dropped, as a WebDataset sample stores them).
Images that are not ok (status 0 pending, 2 failed) carry the scalars only.

Zarr chunks span a whole shard along N (schemas: chunks = shard size), so reading one row
decodes its shard's chunk. ``ZarrImages`` keeps the last decoded chunk of each array, so
reading rows in shard order (the trainer's block shuffle: ``ResumableSampler``,
trainer/distributed.py) decodes each chunk once; purely random access would decode a
chunk per row.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..schemas.commits import valid_commits
from ..schemas.errors import CacheError
from ..schemas.jobdir import JobDir
from ..schemas.record import OBJECT_ARRAYS, SCALARS, TENSORS, Status


def zarr_path(job_dir: Path) -> Path:
    """The job's ``tokens.zarr``; CacheError when the job was never run."""
    path = JobDir(Path(job_dir)).tokens
    if not (path / "zarr.json").exists():
        raise CacheError(f"no token cache at {path}: run `masktok run {job_dir}` first")
    return path


def wds_shards(job_dir: Path) -> list[Path]:
    """The tars of committed shards only: a tar without a commit may be half-redone."""
    jd = JobDir(Path(job_dir))
    shards = sorted(jd.wds / c["wds"]["file"] for c in valid_commits(jd).values() if c.get("wds"))
    if not shards:
        raise CacheError(f"no committed WebDataset shards under {jd.wds} (write.webdataset off, or not run)")
    return shards


def _scalar(name: str, value: Any) -> Any:
    if name == "image_id":
        return str(value)
    if name in ("patch_norm_mean", "patch_norm_std"):
        return float(np.float32(value))
    return int(value)


class ZarrImages(Dataset):
    """Map-style dataset: item ``i`` is manifest row ``i`` of the cache (any status)."""

    def __init__(self, job_dir: Path) -> None:
        self.path = zarr_path(job_dir)
        group = self._open()
        self.image_ids: list[str] = [str(x) for x in group["image_id"][:]]
        self.status: np.ndarray = np.asarray(group["status"][:])
        self.dims: dict[str, int] = dict(group.attrs["dims"])
        self.chunk_rows: int = int(group["status"].chunks[0])
        self._group: Any = None
        self._chunks: dict[str, tuple[int, np.ndarray]] = {}

    def _open(self) -> Any:
        import zarr

        return zarr.open_group(self.path, mode="r")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handle
        return {**self.__dict__, "_group": None, "_chunks": {}}

    def _row(self, name: str, i: int) -> np.ndarray:
        c = i // self.chunk_rows
        cached = self._chunks.get(name)
        if cached is None or cached[0] != c:
            if self._group is None:
                self._group = self._open()
            cached = (c, np.asarray(self._group[name][c * self.chunk_rows:(c + 1) * self.chunk_rows]))
            self._chunks[name] = cached
        return cached[1][i - c * self.chunk_rows]

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        rec: dict[str, Any] = {"index": i}
        for name in SCALARS:
            rec[name] = _scalar(name, self._row(name, i))
        if rec["status"] != Status.OK:
            return rec
        k = rec["num_objects"]
        for name in TENSORS:
            value = self._row(name, i)
            rec[name] = value[:k].copy() if name in OBJECT_ARRAYS else value.copy()
        return rec


def read_tar(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one WebDataset shard, in tar order (members grouped by key)."""
    current: dict[str, Any] = {}
    key = None
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = member.name.partition(".")
            if k != key and current:
                yield _sample_record(current)
                current = {}
            key = k
            current[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if current:
        yield _sample_record(current)


def _sample_record(members: dict[str, bytes]) -> dict[str, Any]:
    meta = json.loads(members["json"])
    rec: dict[str, Any] = {"index": int(meta["index"])}
    for name in SCALARS:
        rec[name] = _scalar(name, meta[name])
    if rec["status"] != Status.OK:
        return rec
    for name in TENSORS:
        rec[name] = np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)
    return rec


def split_for_worker(items: list[Any], rank: int = 0, world: int = 1) -> list[Any]:
    """The share of ``items`` of this (rank, DataLoader worker): strided, so every consumer
    of a multi-process, multi-worker run reads disjoint shards."""
    info = get_worker_info()
    workers, wid = (info.num_workers, info.id) if info else (1, 0)
    return items[rank * workers + wid:: world * workers]


class WdsImages(IterableDataset):
    """Streaming dataset over the WebDataset shards, in shard and key order.

    With ``rank``/``world`` (default: from torchrun's RANK/WORLD_SIZE) and DataLoader
    workers, each consumer reads every ``world * workers``-th shard.
    """

    def __init__(self, job_dir: Path, rank: int | None = None, world: int | None = None) -> None:
        self.shards = wds_shards(job_dir)
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for shard in split_for_worker(self.shards, self.rank, self.world):
            yield from read_tar(shard)


def as_tensors(rec: dict[str, Any]) -> dict[str, Any]:
    """A record with its arrays as torch tensors (for tests and callers that want torch)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in rec.items()}
