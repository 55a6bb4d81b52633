"""The manifest: one row per unique image of a job, the index every other file keys on.

Rows are the unique image ids in a permutation seeded by ``corpus.seed``
(pipeline/plan.py ``row_order``), so every shard is a uniform sample of the corpus;
``index`` is the row number (the first axis of every Zarr array, and the WebDataset sample
key); ``shard`` is ``index // shards.size``.
``corpus_rows`` lists the positions (0-based) in the corpus JSON of the records that name
the image, so the trainer can join conversations back; it is empty for folder corpora.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ManifestError
from .versions import MANIFEST_SCHEMA_VERSION

VERSION = MANIFEST_SCHEMA_VERSION

SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("corpus_rows", pa.list_(pa.int64()), nullable=False),
    ],
    metadata={"masktok.manifest_version": str(VERSION)},
)


def build_table(image_ids: list[str], paths: list[str], corpus_rows: list[list[int]], shard_size: int) -> pa.Table:
    """Assemble a manifest from rows already in manifest order (pipeline/plan.py)."""
    n = len(image_ids)
    index = pa.array(range(n), pa.int64())
    shard = pa.array([i // shard_size for i in range(n)], pa.int32())
    return pa.Table.from_arrays(
        [index, pa.array(image_ids, pa.string()), pa.array(paths, pa.string()), shard,
         pa.array(corpus_rows, pa.list_(pa.int64()))],
        schema=SCHEMA,
    )


def encode_manifest(table: pa.Table) -> bytes:
    """The manifest as Parquet bytes (the caller writes them atomically)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(SCHEMA), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_manifest(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The manifest, read without Arrow's thread pools.

    The file's bytes are read here and parsed single-threaded from memory. A threaded read
    through a Python file object leaves Arrow worker threads (and Python callbacks on them)
    alive at interpreter exit, where they abort a command that has already succeeded,
    rarely, with "terminate called without an active exception" (issue 37;
    apache/arrow#34314). A manifest is small beside its job: at 558K images, 2.6 MB, whose
    four columns `run` reads take one thread 0.6-0.75 s (0.45-0.6 s threaded; measured on
    the 2-core development machine).
    """
    if not path.exists():
        raise ManifestError(f"no manifest at {path}: plan the job first (masktok plan)")
    data = path.read_bytes()  # a Path or a UPath (a job directory on object storage)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        version = (parquet.schema_arrow.metadata or {}).get(b"masktok.manifest_version", b"?").decode()
        if version != str(VERSION):
            raise ManifestError(f"{path}: manifest version {version}, this masktok reads version {VERSION}")
        return parquet.read(columns=columns, use_threads=False)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # truncated, corrupt: not a manifest
        raise ManifestError(f"{path} cannot be read ({type(exc).__name__}: {exc}): it is damaged; `masktok plan` "
                            "with the job's inputs writes it again (the shards committed for it are kept)") from None
