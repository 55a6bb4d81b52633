"""Benchmark: how many finished images per second the sink absorbs, at ViT-L dims (K = 101,
D = 768, C = 1024, 60 objects per image, record v2, both sinks), and what the driver spends.

- ``write_shard``: the commit path in one process, shard after shard (how issue 20 measured
  96 images/s before the writer pool): both sinks, and Zarr only.
- ``writers_N``: the run's real path on a local Ray: a source actor hands finished images
  to N writer actors (graph.deliver, as the last stage group does; blocks of 8 images),
  the driver runs the run's loop (writers.coordinate). images/s over that loop (stream
  start to last commit); CPU per image of the coordinator's own thread (what masktok's
  driver does per image: reports, books, progress), of the whole driver process (which
  also runs Ray Data's executor: its per-block cost, not the sink's) and of the writers.
  On a 2-core machine the source, the driver and the writers share two cores: the 1-to-2
  writers ratio is the figure there, 4 writers only shows that more do not help.
- ``reader``: bench_reader's random rows (trainer.data.readers.ZarrImages) on the store the
  most writers wrote.
- ``s3_*``: ``write_shard`` and 1 and 2 writers again with the job directory on the local
  S3 server of the tests (moto in server mode, tests/s3_server.py; ``--s3-shards`` shards):
  our object-storage path plus a Python mock server sharing the same two cores, not a
  figure of real S3.

The items are seeded random tokens (tiny.cache.tiny_items), 32 distinct ones
reused under new indices (generating 4,000 would take longer than writing them).

    .venv/bin/python benchmarks/bench_sink.py [--shard-size 1000] [--shards 4] [--writers 1 2 4]
        [--s3-shards 2] [--out PATH]
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

DIMS = {"K": 101, "D": 768, "C": 1024}
OBJECTS = 61  # 60 objects + the background
POOL = 32


def items_for(indices, pool: list[dict]) -> list[dict]:
    return [{**pool[i % len(pool)], "index": int(i), "image_id": f"img/{int(i):07d}.jpg"} for i in indices]


class Source:
    """The last stage group without models: finished images for the indices it is given,
    handed to the writers the way graph.StageGroup hands them."""

    def __init__(self, writers: tuple[str, ...], shard_size: int):
        import ray

        from masktok.tiny.cache import tiny_items
        from masktok.stages.write import TokenDims

        self.pool = tiny_items(POOL, TokenDims(**DIMS), objects=OBJECTS)
        self.writers = [ray.get_actor(name) for name in writers]
        self.shard_size = shard_size

    def __call__(self, batch):
        from masktok.pipeline.graph import deliver

        return deliver(items_for(batch["id"], self.pool), self.writers, self.shard_size)


def direct(root: Path | str, shard_size: int, shards: int, webdataset: bool) -> float:
    """images/s of write_shard in this process (``root``: a folder or an s3:// URL)."""
    from masktok.pipeline.commit import write_shard
    from masktok.tiny.cache import tiny_items
    from masktok.schemas.jobdir import JobDir
    from masktok.stages.write import TokenDims, open_store

    dims = TokenDims(**DIMS)
    pool = tiny_items(POOL, dims, objects=OBJECTS)
    jd = JobDir(root)
    group = open_store(jd.tokens, shard_size * shards, shard_size, dims)
    seconds = 0.0
    for shard in range(shards):
        start = shard * shard_size
        items = items_for(range(start, start + shard_size), pool)
        t0 = time.perf_counter()
        write_shard(jd, group, shard, start, start + shard_size, items, dims, "sha256:bench", webdataset)
        seconds += time.perf_counter() - t0
    return shard_size * shards / seconds


def through_writers(ray, root: Path | str, writers: int, shard_size: int, shards: int, block: int = 8) -> dict:
    """The run's sink path with ``writers`` writer actors."""
    import ray.data

    from masktok.pipeline.writers import Books, WriterPool, coordinate
    from masktok.schemas.jobdir import JobDir
    from masktok.schemas.spec import JobSpec
    from masktok.stages.write import TokenDims, open_store

    rows = shard_size * shards
    jd = JobDir(root)
    open_store(jd.tokens, rows, shard_size, TokenDims(**DIMS))
    spec = JobSpec.model_validate({"shards": {"size": shard_size},
                                   "write": {"resources": {"actors": writers, "cpus": 0.25}}})
    pool = WriterPool(jd, spec, {"fingerprint": "sha256:bench", "manifest_digest": None}, rows, TokenDims(**DIMS))
    ray.get([a.pid.remote() for a in pool.actors])  # started
    writer_cpu = ray.get([a.cpu_seconds.remote() for a in pool.actors])
    ds = ray.data.range(rows, override_num_blocks=max(1, rows // block)).map_batches(
        Source, fn_constructor_args=(tuple(pool.names), shard_size), batch_size=8, num_cpus=0.25,
        compute=ray.data.ActorPoolStrategy(size=1))
    wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
    books = coordinate(ds, pool, Books(set(range(shards))))
    wall, cpu, own = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own
    books.raise_problems()
    writer_cpu = sum(ray.get([a.cpu_seconds.remote() for a in pool.actors])) - sum(writer_cpu)
    for actor in pool.actors:
        ray.kill(actor)
    return {"images_per_s": round(rows / wall, 1),
            # coordinate's own thread: the reports, the books, the progress
            "driver_coordinator_cpu_ms_per_image": round(own / rows * 1e3, 4),
            # the whole driver process: with Ray Data's executor (its threads) and the stream
            "driver_process_cpu_ms_per_image": round(cpu / rows * 1e3, 3),
            "writer_cpu_ms_per_image": round(writer_cpu / rows * 1e3, 3),
            "shards": len(books.committed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seconds", type=float, default=3.0, help="of random reads")
    ap.add_argument("--s3-shards", type=int, default=2, help="shards of the S3 rows (0: none)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import ray

    from masktok.trainer.data.readers import ZarrImages

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "tests")]
    from bench_reader import read_rate
    from s3_server import new_bucket, s3_server

    tmp = Path(tempfile.mkdtemp(prefix="bench_sink_"))
    result: dict = {"dims": DIMS, "objects": OBJECTS - 1, "shard_size": args.shard_size, "shards": args.shards}
    try:
        result["write_shard_images_per_s"] = {
            "both_sinks": round(direct(tmp / "direct", args.shard_size, args.shards, True), 1),
            "zarr_only": round(direct(tmp / "direct_zarr", args.shard_size, args.shards, False), 1)}
        with s3_server(tmp / "moto.log"):  # before Ray: its workers take the server's variables
            bucket = new_bucket("bench-sink")
            if args.s3_shards:
                result["s3_write_shard_images_per_s"] = round(
                    direct(f"{bucket}/direct", args.shard_size, args.s3_shards, True), 1)
            ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            try:
                for n in args.writers:
                    result[f"writers_{n}"] = through_writers(ray, tmp / f"w{n}", n, args.shard_size, args.shards)
                    print(n, result[f"writers_{n}"], flush=True)
                for n in (1, 2) if args.s3_shards else ():
                    result[f"s3_writers_{n}"] = through_writers(ray, f"{bucket}/w{n}", n, args.shard_size,
                                                                args.s3_shards)
                    print("s3", n, result[f"s3_writers_{n}"], flush=True)
            finally:
                ray.shutdown()
        most = max(args.writers)
        rows = np.random.default_rng(0).permutation(args.shard_size * args.shards)
        result["reader_random_rows_per_s"] = round(read_rate(ZarrImages(tmp / f"w{most}"), rows, args.seconds), 1)
        one = result.get("writers_1")
        if one and "writers_2" in result:
            result["two_to_one_writers"] = round(result["writers_2"]["images_per_s"] / one["images_per_s"], 2)
        if one:
            result["coordinator_to_writer_cpu"] = round(
                one["driver_coordinator_cpu_ms_per_image"] / one["writer_cpu_ms_per_image"], 4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
