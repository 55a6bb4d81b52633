"""Write stage: finished items of one shard -> rows of ``tokens.zarr`` + one WebDataset tar.

The two sinks hold the same values. Zarr rows are padded to K objects (``num_objects``
says how many are real); a WebDataset sample holds only the real rows. A failed image
still gets its row (status 2, fill values) and a JSON-only sample carrying the reason, so
both sinks stay one-to-one with the manifest.

Nothing here commits: the caller writes the tar atomically and then the shard's commit
file (pipeline/commit.py), so a shard interrupted halfway is simply redone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..schemas import record
from ..schemas.record import (FINE_PATCH_ARRAY, OBJECT_ARRAYS, POOLED_GRID, SCALARS, Status, arrays_of,
                              leading_triangle, sample_key, upper_triangle)
from ..schemas.failures import kind_of
from ..schemas.versions import ZARR_LAYOUT
from ..schemas.storage import open_zarr
from . import tarbytes
from .batch import rle_to_json


class WriteError(RuntimeError):
    """An item or store that breaks the write contract: a bug of the caller, not a user
    error, so it is no ``MasktokError`` and keeps its traceback."""


@dataclass(frozen=True)
class TokenDims:
    """Sizes of the record axes: K objects incl. background, D embed dim, C vision width."""

    K: int
    D: int
    C: int

    def as_dict(self) -> dict[str, int]:
        return {"K": self.K, "D": self.D, "C": self.C}


#: Arrays whose one-row chunks are zstd-compressed: the big float16 tensors. The rows of
#: ``object_tokens`` and ``mask_iou`` past ``num_objects`` are zero padding (about 45% of the
#: bytes of a 60-object image at K = 101). 1-D arrays (one chunk per shard) keep zarr's default.
COMPRESSED = ("object_tokens", "patch_tokens", "mask_iou", FINE_PATCH_ARRAY.name)


def open_store(path: Path, rows: int, shard_size: int, dims: TokenDims, version: int = record.VERSION,
               filter_settings: dict[str, Any] | None = None, patch_grid: int = POOLED_GRID) -> zarr.Group:
    """Open ``tokens.zarr``, creating every array of the record schema on first use.

    Layout ``ZARR_LAYOUT`` ("sharded-rows"): every array uses Zarr v3's sharding codec with
    one shard (file, key ``c/<shard>/0/...``) per manifest shard, so a commit writes only its
    own files. Inside a shard, arrays of per-row tensors have one chunk per row, so a trainer
    reads a random row without decoding its neighbours (ViT-L dims, benchmarks/bench_reader.py:
    ~1,500 random records/s against ~9 with whole-shard chunks). 1-D arrays (a few bytes per
    row) keep one chunk per shard: one-row chunks there would make reading a whole column, as
    readers do when they open the store, decode N chunks (37 s per 100k rows).

    Only the large tensors (``COMPRESSED``) are compressed (zstd, zarr's default): the
    small per-row arrays would save a few hundred bytes a row and cost as much CPU as the
    big ones (zarr's per-chunk overhead; benchmarks/bench_sink.py).

    An existing store keeps the layout and record version it was created with (resuming an
    older job is fine). ``version`` creates a store of an older record version (tests).
    ``filter_settings`` (the spec's ``filter``: ``iou_threshold``, ``max_objects``) go in the
    group attr ``filter``: a reader re-filtering objects needs to know whether rows were cut.
    ``patch_grid`` (the spec's ``write.patch_grid``) 12 adds ``patch_tokens_144`` and the group
    attr ``patch_grid``; at 6 the store is as it was before the key existed (no attr).
    """
    if (path / "zarr.json").exists():
        group = open_zarr(path, mode="r+")
        stored = group.attrs.get("dims")
        if stored != dims.as_dict() or group["status"].shape[0] != rows:
            raise WriteError(f"{path} was created for {stored} x {group['status'].shape[0]} rows, "
                             f"not {dims.as_dict()} x {rows}")
        if store_patch_grid(group) != patch_grid:
            raise WriteError(f"{path} was created with patch_grid {store_patch_grid(group)}, not {patch_grid}")
        return group
    group = open_zarr(path, mode="w")
    group.attrs.update({"record_schema_version": version, "dims": dims.as_dict(), "shard_size": shard_size,
                        "layout": ZARR_LAYOUT, "filter": dict(filter_settings or {}),
                        **({} if patch_grid == POOLED_GRID else {"patch_grid": patch_grid})})
    for spec in arrays_of(version, patch_grid):
        shape = spec.shape(rows, dims.as_dict())
        rest = shape[1:]
        group.create_array(spec.name, shape=shape, shards=(shard_size, *rest),
                           chunks=(1 if rest else shard_size, *rest),
                           dtype=str if spec.dtype == "str" else spec.dtype, fill_value=spec.fill,
                           **({} if spec.name in COMPRESSED or not rest else {"compressors": None}))
    return group


def store_version(group: zarr.Group) -> int:
    """The record version a store was created with (a job resumed by a newer masktok keeps
    writing the arrays its store has)."""
    return int(group.attrs.get("record_schema_version", 1))


def store_patch_grid(group: zarr.Group) -> int:
    """The finest patch grid a store keeps: 12 when it has ``patch_tokens_144``, else 6."""
    return int(group.attrs.get("patch_grid", POOLED_GRID))


def shard_rows(items: list[dict[str, Any]], start: int, end: int, dims: TokenDims,
               version: int = record.VERSION, patch_grid: int = POOLED_GRID) -> dict[str, np.ndarray]:
    """The record arrays (those of ``version`` and ``patch_grid``) for manifest rows
    [start, end), from one finished item per row."""
    by_index = {item["index"]: item for item in items}
    if sorted(by_index) != list(range(start, end)):
        raise WriteError(f"shard rows {start}..{end - 1} need one item each, got indices {sorted(by_index)[:5]}...")
    n = end - start
    rows = {s.name: np.full(s.shape(n, dims.as_dict()), s.fill, dtype=s.numpy_dtype())
            for s in arrays_of(version, patch_grid)}
    for i in range(n):
        item = by_index[start + i]
        rows["image_id"][i] = item["image_id"]
        if "error" in item:
            rows["status"][i] = Status.FAILED
            continue
        _fill_row(rows, i, item, dims)
    return rows


def _fill_row(rows: dict[str, np.ndarray], i: int, item: dict[str, Any], dims: TokenDims) -> None:
    k = len(item["object_tokens"])
    if k > dims.K:
        raise WriteError(f"{item['image_id']}: {k} objects, the store holds at most K={dims.K}")
    rows["status"][i] = Status.OK
    for name in ("width", "height", "patch_norm_mean", "patch_norm_std"):
        rows[name][i] = item[name]
    rows["num_objects"][i] = k
    for name in OBJECT_ARRAYS:
        rows[name][i, :k] = np.asarray(item[name])
    rows["global_token"][i] = np.asarray(item["global_token"])
    rows["patch_tokens"][i] = np.asarray(item["patch_tokens"])
    if FINE_PATCH_ARRAY.name in rows:
        if FINE_PATCH_ARRAY.name not in item:
            raise WriteError(f"{item['image_id']}: the store keeps the 12x12 patch grid, the item has none "
                             "(the invert stage was built without patch_grid = 12)")
        rows[FINE_PATCH_ARRAY.name][i] = np.asarray(item[FINE_PATCH_ARRAY.name])
    if "mask_iou" in rows:  # record v2: the filter stage's IoU matrix, as a padded triangle
        square = np.zeros((dims.K, dims.K), np.float16)
        square[:k, :k] = np.asarray(item["pairwise_iou"], np.float16)
        rows["mask_iou"][i] = upper_triangle(square)


def checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's values (strings joined by NUL), as written and as read back."""
    if array.dtype.kind in "OUT":
        data = "\0".join(str(x) for x in array.ravel()).encode()
    else:
        data = np.ascontiguousarray(array).tobytes()
    return hashlib.sha256(data).hexdigest()


#: How the writer opens each array: every inner chunk is encoded and stored, fill values or
#: not. Zarr's default compares each one-row chunk with a chunk of fill values first, to
#: leave it out (about a third of the write time at ViT-L dims); a row of fill values costs a
#: few bytes compressed, and reads back the same either way.
WRITE_CONFIG = {"write_empty_chunks": True}
#: Zarr's codec pipeline takes the one-row chunks of a shard 128 at a time, not one by one
#: (its per-chunk overhead is most of the write time of the small arrays).
WRITE_PIPELINE = {"codec_pipeline.batch_size": 128}


def write_zarr_rows(group: zarr.Group, start: int, rows: dict[str, np.ndarray],
                    flush: Callable[[list[str]], None] = lambda names: None) -> dict[str, str]:
    """Write the rows and return the checksum of each array's slice.

    ``status`` is what readers trust, so it is reset to pending first and written last,
    after ``flush(names)`` has made every other array durable: a reader never sees status 1
    on a row whose tokens are not all there.
    """
    end = start + len(rows["status"])
    with zarr.config.set(WRITE_PIPELINE):
        arrays = {name: group[name].with_config(WRITE_CONFIG) for name in rows}
        arrays["status"][start:end] = Status.PENDING
        others = [name for name in rows if name != "status"]
        for name in others:
            arrays[name][start:end] = rows[name]
        flush(others)
        arrays["status"][start:end] = rows["status"]
        flush(["status"])
    return {name: checksum(values) for name, values in rows.items()}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _sample(index: int, rows: dict[str, np.ndarray], i: int, item: dict[str, Any], rle_masks: bool) -> dict[str, bytes]:
    """The members of manifest row ``index``'s sample, by extension, encoded (npy, json)."""
    meta: dict[str, Any] = {"index": index}
    for name in SCALARS:
        value = rows[name][i]
        meta[name] = value if isinstance(value, str) else value.item()
    sample: dict[str, bytes] = {}
    if "error" in item:
        meta["error"] = item["error"]
    else:
        k = int(rows["num_objects"][i])
        for name, values in rows.items():
            if name in SCALARS:
                continue
            value = values[i]
            if name in OBJECT_ARRAYS:
                value = value[:k]
            elif name == "mask_iou":  # the triangle of the real rows only
                value = leading_triangle(value, len(rows["keep_rank"][i]), k)
            sample[f"{name}.npy"] = tarbytes.npy(value)
        if rle_masks:
            sample["masks.json"] = _json([rle_to_json(m) for m in item["masks"][:k]])
    sample["json"] = _json(meta)
    return sample


def encode_wds_shard(items: list[dict[str, Any]], start: int, rows: dict[str, np.ndarray],
                     rle_masks: bool = False) -> bytes:
    """The shard's WebDataset tar, in memory (the caller writes it atomically).

    A plain POSIX (ustar) tar, members of a sample in name order as webdataset's TarWriter
    writes them, but bytes that depend on the job only (stages/tarbytes.py: fixed mtime and
    owner, no pax headers): the same job gives the same tar whichever writer writes it.
    """
    by_index = {item["index"]: item for item in items}
    members = []
    for i in range(len(rows["status"])):
        key = sample_key(start + i)
        sample = _sample(start + i, rows, i, by_index[start + i], rle_masks)
        members.extend(tarbytes.member(f"{key}.{ext}", data) for ext, data in sorted(sample.items()))
    return tarbytes.archive(members)


def failures_of(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed images of a shard, as rows of failures.parquet (with their kind,
    schemas/failures.py)."""
    return [{"index": it["index"], "image_id": it["image_id"], "stage": it["error"]["stage"],
             "reason": it["error"]["reason"], "kind": kind_of(it["error"])}
            for it in sorted(items, key=lambda it: it["index"]) if "error" in it]
