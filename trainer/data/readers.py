"""Readers of a finished job's cache: map-style over ``tokens.zarr``, streaming over ``wds/``.

Both yield the same per-image record (a dict), so the rest of the trainer never knows
which sink it reads:

    index, image_id, status, width, height, num_objects, patch_norm_mean, patch_norm_std
    object_tokens [k, D] f16, boxes [k, 4] f32, scores [k] f32, keep_rank [k] i16,
    inversion_loss [k] f32, global_token [D] f16, patch_tokens [36, C] f16,
    mask_iou [k(k-1)/2] f16 (record v2 only: the pairwise IoU triangle of the k rows)
    patch_tokens_144 [144, C] f16 (only from a cache planned with write.patch_grid = 12)

with k = num_objects (Zarr's padding rows dropped, as a WebDataset sample stores them).
Images that are not ok (status 0 pending, 2 failed) carry the scalars only.

Zarr: a store in the current layout reads any row alone (one-row chunks inside one shard
file per manifest shard); an older store whose chunks are whole shards is read chunk by
chunk (see ``ZarrImages``). WebDataset: the committed tars, shuffled per epoch.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ...schemas.commits import valid_commits
from ...schemas.errors import CacheError
from ...schemas.jobdir import JobDir
from ...schemas.record import (FINE_PATCH_ARRAY, OBJECT_ARRAYS, POOLED_GRID, SCALARS, SINCE_VERSION, TENSORS,
                               Status, leading_triangle, tensors_of)
from ...schemas.storage import is_remote, open_zarr
from ...schemas.versions import RECORD_SCHEMA_VERSIONS, ZARR_LAYOUTS


def zarr_path(job_dir: Path) -> Path:
    """The job's ``tokens.zarr``; CacheError when the job was never run."""
    path = JobDir(job_dir).tokens
    if not (path / "zarr.json").exists():
        raise CacheError(f"no token cache at {path}: run `masktok run {job_dir}` first")
    return path


def wds_shards(job_dir: Path) -> list[Path]:
    """The tars of committed shards only: a tar without a commit may be half-redone."""
    jd = JobDir(job_dir)
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
    """Map-style dataset: item ``i`` is manifest row ``i`` of the cache (any status).

    The scalar columns are read whole at open (a few bytes per row); the tensors of a row
    are read on demand, as the store's layout allows (group attr ``layout``,
    schemas/versions.py):

    - "sharded-rows": each row of a tensor is a chunk of its own inside its shard file, so
      any order is cheap and ``chunk_rows`` is 1. A row is read straight from the shard file
      as the Zarr v3 sharding format lays it out (the chunk's offset and size in an index at
      the end of the file): zarr's own ``array[i]`` spends 1-3 ms per call in its event
      loop, which caps a record of 7 tensors at ~100/s. Arrays coded otherwise go through zarr.
    - "shard-chunks" (stores written before): one chunk per shard, ``chunk_rows`` = shard
      size. The last decoded chunk of each array is kept, so reading in shard order (the
      trainer's block shuffle, trainer/parallel/distributed.py) decodes each chunk once; random
      access decodes a whole chunk per row.
    """

    def __init__(self, job_dir: Path) -> None:
        self.path = zarr_path(job_dir)
        group = self._open()
        self.dims: dict[str, int] = dict(group.attrs["dims"])
        self.layout: str = str(group.attrs.get("layout", "shard-chunks"))
        if self.layout not in ZARR_LAYOUTS:
            raise CacheError(f"{self.path} has layout {self.layout!r}, written by a newer masktok "
                             f"(this one reads {', '.join(ZARR_LAYOUTS)})")
        self.version: int = int(group.attrs.get("record_schema_version", 1))
        if self.version not in RECORD_SCHEMA_VERSIONS:
            raise CacheError(f"{self.path} has record version {self.version}, written by a newer masktok "
                             f"(this one reads {', '.join(map(str, RECORD_SCHEMA_VERSIONS))})")
        self.patch_grid: int = int(group.attrs.get("patch_grid", POOLED_GRID))  # 12: patch_tokens_144 too
        self.tensors = tensors_of(self.version, self.patch_grid)
        self.filter: dict[str, Any] = dict(group.attrs.get("filter", {}))
        self._scalars: dict[str, np.ndarray] = {name: np.asarray(group[name][:]) for name in SCALARS}
        self.image_ids: list[str] = [str(x) for x in self._scalars["image_id"]]
        self._rows = {image: i for i, image in enumerate(self.image_ids)}
        self.status: np.ndarray = self._scalars["status"]
        sharded = self.layout == "sharded-rows"
        self.chunk_rows: int = 1 if sharded else int(group["status"].chunks[0])
        self._direct: dict[str, tuple[Any, ...]] = {}
        if sharded and not is_remote(self.path):  # on object storage, zarr's own (concurrent) reads
            formats = {name: self._shard_format(group[name]) for name in self.tensors}
            self._direct = {name: f for name, f in formats.items() if f is not None}
        self._arrays: dict[str, Any] = {}  # zarr handles, opened on first use (per process)
        self._chunks: dict[str, tuple[int, np.ndarray]] = {}

    def row_of(self, image_id: str) -> int | None:
        """The manifest row of ``image_id`` (None: not in the cache)."""
        return self._rows.get(image_id)

    def _open(self) -> Any:
        return open_zarr(self.path, mode="r")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handle
        return {**self.__dict__, "_arrays": {}, "_chunks": {}}

    @staticmethod
    def _shard_format(array: Any) -> tuple[Any, ...] | None:
        """(shard rows, row shape, dtype, fill, chunk key encoding, zstd?) of an array coded as
        stages/write.py codes it (sharding, one-row chunks of bytes [+ zstd], a little-endian
        index with a CRC32C at the end); None for anything else."""
        codecs = [c.to_dict() for c in array.metadata.codecs]
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return None
        cfg = codecs[0]["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        little = all(c.get("configuration", {}).get("endian", "little") == "little"
                     for c in (cfg["codecs"][0], cfg["index_codecs"][0]))
        index = [c["name"] for c in cfg["index_codecs"]]
        if (list(cfg["chunk_shape"]) != [1, *array.shape[1:]] or cfg["index_location"] != "end" or not little
                or inner not in (["bytes"], ["bytes", "zstd"]) or index != ["bytes", "crc32c"]):
            return None
        return (int(array.shards[0]), tuple(array.shape[1:]), np.dtype(array.dtype).newbyteorder("<"),
                array.metadata.fill_value, array.metadata.chunk_key_encoding, inner[-1] == "zstd")

    def _shard_row(self, name: str, i: int) -> np.ndarray:
        """Row ``i`` of ``name`` read from its shard file: its index entry, then its chunk."""
        rows, shape, dtype, fill, keys, zstd = self._direct[name]
        shard, j = divmod(i, rows)
        try:
            fd = os.open(self.path / name / keys.encode_chunk_key((shard,) + (0,) * len(shape)), os.O_RDONLY)
        except FileNotFoundError:  # the shard holds only fill values: zarr wrote no file
            return np.full(shape, fill, dtype)
        try:
            index = os.fstat(fd).st_size - 4 - 16 * rows  # (offset, nbytes) uint64 per chunk, then the CRC
            offset, nbytes = np.frombuffer(os.pread(fd, 16, index + 16 * j), "<u8").tolist()
            if offset == 2 ** 64 - 1:  # an empty chunk: fill values
                return np.full(shape, fill, dtype)
            data = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        if zstd:
            from numcodecs import Zstd

            data = Zstd().decode(data)
        return np.frombuffer(data, dtype).reshape(shape)

    def _row(self, name: str, i: int) -> np.ndarray:
        if name in self._direct:
            return self._shard_row(name, i)
        if not self._arrays:
            group = self._open()
            self._arrays = {a: group[a] for a in self.tensors}
        if self.chunk_rows == 1:
            return np.asarray(self._arrays[name][i])
        c = i // self.chunk_rows
        cached = self._chunks.get(name)
        if cached is None or cached[0] != c:
            cached = (c, np.asarray(self._arrays[name][c * self.chunk_rows:(c + 1) * self.chunk_rows]))
            self._chunks[name] = cached
        return cached[1][i - c * self.chunk_rows]

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        return row_record(i, lambda name: self._scalars[name][i], lambda name: self._row(name, i), self.tensors,
                          self.dims["K"])


def row_record(index: int, scalar: Callable[[str], Any], tensor: Callable[[str], np.ndarray],
               tensors: tuple[str, ...], K: int) -> dict[str, Any]:
    """The record of one Zarr row (see the module docstring) from its values: ``scalar(name)``
    and ``tensor(name)``, padded to ``K`` objects as stored; the padding is dropped here."""
    rec: dict[str, Any] = {"index": index}
    for name in SCALARS:
        rec[name] = _scalar(name, scalar(name))
    if rec["status"] != Status.OK:
        return rec
    k = rec["num_objects"]
    for name in tensors:
        value = tensor(name)
        if name in OBJECT_ARRAYS:
            value = value[:k]
        elif name == "mask_iou":
            value = leading_triangle(value, K, k)
        rec[name] = value.copy()
    return rec


def _sample_record(members: dict[str, bytes]) -> dict[str, Any]:
    meta = json.loads(members["json"])
    rec: dict[str, Any] = {"index": int(meta["index"])}
    for name in SCALARS:
        rec[name] = _scalar(name, meta[name])
    if rec["status"] != Status.OK:
        return rec
    for name in (*TENSORS, FINE_PATCH_ARRAY.name):
        if (name in SINCE_VERSION or name == FINE_PATCH_ARRAY.name) and f"{name}.npy" not in members:
            continue  # written with an older record version, or without the 12x12 grid
        rec[name] = np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)
    return rec


def _open_tars(shards: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each shard's tar as a stream (what webdataset's url_opener gives, read with fsspec)."""
    import fsspec

    for shard in shards:
        with fsspec.open(shard["url"], "rb") as stream:
            yield {**shard, "stream": stream}


def consumer(rank: int = 0, world: int = 1) -> tuple[int, int]:
    """(id, count) of this reader among all of a run's readers: one per (rank, DataLoader
    worker), so that every consumer of a multi-process, multi-worker run reads its own share."""
    info = get_worker_info()
    workers, wid = (info.num_workers, info.id) if info else (1, 0)
    return rank * workers + wid, world * workers


def split_for_worker(items: list[Any], rank: int = 0, world: int = 1) -> list[Any]:
    """The share of ``items`` of this consumer (see :func:`consumer`): strided, disjoint."""
    me, count = consumer(rank, world)
    return items[me::count]


class WdsImages(IterableDataset):
    """Streaming dataset over the committed WebDataset shards, read with the webdataset library.

    Every epoch (:meth:`set_epoch`) the shard list is shuffled with ``seed + epoch`` (the
    same permutation on every rank), then split by node (``rank``/``world``, default: from
    torchrun's RANK/WORLD_SIZE) and by DataLoader worker, so the consumers read disjoint
    shards; samples then pass a shuffle buffer of ``shuffle_buffer`` records, seeded per
    (epoch, consumer). ``shuffle=False``: shard and key order, no buffer. The stream of an
    epoch is a function of (seed, epoch, world, workers): a resumed run replays it exactly.
    """

    def __init__(self, job_dir: Path, rank: int | None = None, world: int | None = None, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 1000) -> None:
        self.shards = wds_shards(job_dir)
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        from .order import epoch_rng

        urls = [str(p) for p in self.shards]
        if self.shuffle:
            urls = [urls[i] for i in epoch_rng(self.seed, self.epoch).permutation(len(urls))]
        rank, world = self.rank, self.world
        # WebDataset's own pipeline, with the tars opened through fsspec: a local path or a
        # job directory's URL (s3://...), which webdataset's gopen does not know
        stages = [wds.SimpleShardList(urls), lambda src: itertools.islice(src, rank, None, world),
                  wds.split_by_worker, _open_tars, wds.tariterators.tar_file_expander, wds.tariterators.group_by_keys]
        if self.shuffle and self.shuffle_buffer > 1:
            me, _ = consumer(rank, world)
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                      rng=random.Random(f"{self.seed}/{self.epoch}/{me}")))
        try:
            for sample in wds.DataPipeline(*stages):  # members as raw bytes, keyed by extension ("json", "boxes.npy", ...)
                yield _sample_record(sample)
        except (tarfile.TarError, EOFError) as exc:  # webdataset adds the shard's URL to the arguments
            url = next((a for a in exc.args[1:] if isinstance(a, str)), "a WebDataset shard")
            reason = str(exc.args[0] if exc.args else exc).split(" @ ")[0]  # not the stream's repr
            raise CacheError(f"{url} cannot be read ({type(exc).__name__}: {reason}): it is "
                             "damaged; `masktok verify` names it, `--repair` uncommits it and `masktok run` writes it "
                             "again (or train with --reader zarr)") from None


def as_tensors(rec: dict[str, Any]) -> dict[str, Any]:
    """A record with its arrays as torch tensors (for tests and callers that want torch)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in rec.items()}
