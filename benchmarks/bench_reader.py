"""Benchmark: random rows of ``tokens.zarr`` through the trainer's ``ZarrImages``, at ViT-L
dims (K=101, D=768, C=1024, float16 tokens), current layout against the older one.

- sharded_rows: the layout ``open_store`` writes (Zarr v3 sharding codec, one shard file per
  manifest shard, one-row chunks inside), read as ``ZarrImages`` reads it (straight from the
  shard files); "through_zarr" is the same store read with zarr's ``array[i]``.
- shard_chunks: the older layout (one chunk per manifest shard, as jobs written before have).
  The reader keeps the last decoded chunk of each array, so "shard_order" (the trainer's
  block shuffle on such stores) decodes each chunk once, and "random" decodes one per row.

Both stores hold the same items (``tiny_items``: seeded random tokens, 2..K objects per
image), ``--shards`` x ``--shard-size`` rows written through the commit path
(``write_shard``, no WebDataset). Random reads alternate between shards, so every read of
the old layout misses its one-chunk cache, as random reads over a store of many shards do.
One process, page cache warm (the stores fit in memory).

    .venv/bin/python benchmarks/bench_reader.py [--shards 2] [--shard-size 256] [--seconds 4] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def open_old_store(path: Path, rows: int, shard_size: int, dims) -> object:
    """tokens.zarr as ``open_store`` created it before the sharded layout."""
    import zarr

    from masktok.schemas import record

    group = zarr.open_group(path, mode="w")
    group.attrs.update({"record_schema_version": record.VERSION, "dims": dims.as_dict(), "shard_size": shard_size})
    for spec in record.ARRAYS:
        shape = spec.shape(rows, dims.as_dict())
        group.create_array(spec.name, shape=shape, chunks=(shard_size, *shape[1:]), fill_value=spec.fill,
                           dtype=str if spec.dtype == "str" else spec.dtype)
    return group


def write_store(root: Path, items: list[dict], shard_size: int, dims, old: bool) -> float:
    """Write ``items`` as a job's tokens.zarr; returns the seconds the commits took."""
    from masktok.pipeline.commit import write_shard
    from masktok.schemas.jobdir import JobDir
    from masktok.stages.write import open_store

    jd = JobDir(root)
    jd.root.mkdir(parents=True)
    make = open_old_store if old else open_store
    group = make(jd.tokens, len(items), shard_size, dims)
    t0 = time.perf_counter()
    for shard, start in enumerate(range(0, len(items), shard_size)):
        end = min(start + shard_size, len(items))
        write_shard(jd, group, shard, start, end, items[start:end], dims, "sha256:bench", webdataset=False)
    return time.perf_counter() - t0


def read_rate(images, rows: np.ndarray, seconds: float) -> float:
    """Records/s of ``images[i]`` over ``rows`` (cycled), for about ``seconds``."""
    images[int(rows[-1])]  # warm-up: open the store
    n, t0 = 0, time.perf_counter()
    while n < len(rows) * 4 and (n == 0 or time.perf_counter() - t0 < seconds):
        images[int(rows[n % len(rows)])]
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from masktok.tiny.cache import tiny_items
    from masktok.stages.write import TokenDims
    from masktok.trainer.data.readers import ZarrImages

    dims = TokenDims(K=101, D=768, C=1024)
    n, size = args.shards * args.shard_size, args.shard_size
    items = tiny_items(n, dims)
    tmp = Path(tempfile.mkdtemp(prefix="bench_reader_"))
    try:
        write_s = {"sharded_rows": write_store(tmp / "new", items, size, dims, old=False),
                   "shard_chunks": write_store(tmp / "old", items, size, dims, old=True)}
        del items
        rng = np.random.default_rng(0)
        # random rows, consecutive ones in different shards
        random_rows = np.stack([start + rng.permutation(size) for start in range(0, n, size)], 1).ravel()
        new, old = ZarrImages(tmp / "new"), ZarrImages(tmp / "old")
        through_zarr = ZarrImages(tmp / "new")
        through_zarr._direct = {}  # zarr's own array[i] for every tensor
        rates = {
            "sharded_rows_random": read_rate(new, random_rows, args.seconds),
            "sharded_rows_random_through_zarr": read_rate(through_zarr, random_rows, args.seconds),
            "shard_chunks_shard_order": read_rate(old, np.arange(n), args.seconds),
            "shard_chunks_random": read_rate(old, random_rows, args.seconds),
        }
        store_bytes = {name: sum(p.stat().st_size for p in (tmp / d / "tokens.zarr").rglob("*") if p.is_file())
                       for name, d in (("sharded_rows", "new"), ("shard_chunks", "old"))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "dims": dims.as_dict(), "shards": args.shards, "shard_size": size,
        "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "speedup_random": round(rates["sharded_rows_random"] / rates["shard_chunks_random"], 1),
        "write_s_per_shard": {k: round(v / args.shards, 2) for k, v in write_s.items()},
        "store_mb": {k: round(v / 2**20, 1) for k, v in store_bytes.items()},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
