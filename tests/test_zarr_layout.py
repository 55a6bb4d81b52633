"""tokens.zarr's layout: sharded files of one-row chunks, written by the commit path and read
by the trainer's ZarrImages, which still reads stores of the older whole-shard chunks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec, ShardingCodec

from masktok.pipeline import commit as commits
from masktok.schemas import record
from masktok.schemas.errors import CacheError
from masktok.schemas.jobdir import JobDir
from masktok.schemas.record import ARRAYS
from masktok.stages.write import TokenDims, open_store
from masktok.trainer.data.readers import ZarrImages
from record_checks import assert_same_record
from test_write_commit import DIMS, shard_items

ROWS, SHARD = 10, 4  # shards of rows 0-3, 4-7 and a partial one, 8-9
SHARDS = [(0, 0, 4), (1, 4, 8), (2, 8, 10)]


def open_old_store(path: Path, rows: int, shard_size: int, dims: TokenDims, **codecs) -> zarr.Group:
    """tokens.zarr as open_store created it before the sharded layout: one chunk per shard
    (``shards`` given: that layout's arrays, coded with ``codecs``)."""
    group = zarr.open_group(path, mode="w")
    group.attrs.update({"record_schema_version": record.VERSION, "dims": dims.as_dict(), "shard_size": shard_size})
    for spec in ARRAYS:
        shape = spec.shape(rows, dims.as_dict())
        group.create_array(spec.name, shape=shape, chunks=(shard_size, *shape[1:]), fill_value=spec.fill,
                           dtype=str if spec.dtype == "str" else spec.dtype, **codecs)
    return group


def write_job(root: Path, group: zarr.Group | None = None, shards=SHARDS) -> JobDir:
    jd = JobDir(root)
    group = group if group is not None else open_store(jd.tokens, ROWS, SHARD, DIMS)
    for shard, start, end in shards:
        commit = commits.write_shard(jd, group, shard, start, end, shard_items(start, end - start, failed={5}),
                                     DIMS, "sha256:f", webdataset=False)
        assert commits.verify_shard(jd, group, commit) == []
    return jd


def test_every_array_is_sharded_by_manifest_shard_with_row_chunks(tmp_path):
    group = open_store(tmp_path / "tokens.zarr", ROWS, SHARD, DIMS)
    assert group.attrs["layout"] == "sharded-rows"
    for spec in ARRAYS:
        array = group[spec.name]
        rest = array.shape[1:]
        codec = array.metadata.codecs[0]
        assert isinstance(codec, ShardingCodec) and array.shards == (SHARD, *rest), spec.name
        # a row of a tensor is a chunk; a 1-D column keeps one chunk per shard (whole columns are read at once)
        assert array.chunks == codec.chunk_shape == ((1, *rest) if rest else (SHARD,)), spec.name


def test_a_commit_writes_only_its_own_shard_files_and_the_partial_last_shard_works(tmp_path):
    jd = JobDir(tmp_path)
    group = open_store(jd.tokens, ROWS, SHARD, DIMS)

    def files() -> set[str]:
        return {str(p.relative_to(jd.tokens)) for p in jd.tokens.rglob("*") if p.is_file() and p.name != "zarr.json"}

    for shard, start, end in (SHARDS[1], SHARDS[2], SHARDS[0]):
        before = files()
        write_job(tmp_path, group, [(shard, start, end)])
        new = files() - before
        assert {p.split("/")[2] for p in new} == {str(shard)}  # <array>/c/<shard>[/0...]: the shard file
        assert {p.split("/")[0] for p in new} == {s.name for s in ARRAYS}
    assert "object_tokens/c/2/0/0" in files() and "status/c/2" in files()
    z = ZarrImages(tmp_path)
    assert z.status.tolist() == [1] * 5 + [2] + [1] * 4 and len(z[9]["object_tokens"]) == z[9]["num_objects"]


def test_rows_read_in_random_order_equal_rows_read_in_order_and_zarrs_own_reads(tmp_path):
    jd = write_job(tmp_path)
    z = ZarrImages(tmp_path)
    assert z.layout == "sharded-rows" and z.chunk_rows == 1  # every row a block: a plain shuffle is cheap
    assert set(z._direct) == set(record.TENSORS)  # read straight from the shard files
    in_order = [z[i] for i in range(ROWS)]
    shuffled = pickle.loads(pickle.dumps(z))  # as a DataLoader worker gets it
    for i in np.random.default_rng(0).permutation(ROWS):
        assert_same_record(shuffled[i], in_order[i])
    g = zarr.open_group(jd.tokens, mode="r")
    for i, rec in enumerate(in_order):
        for name in record.TENSORS:
            if name == "mask_iou" and name in rec:  # the triangle of the real rows, cut from K's
                np.testing.assert_array_equal(rec[name], record.leading_triangle(g[name][i], DIMS.K, rec["num_objects"]))
            elif name in rec:
                k = rec["num_objects"] if name in record.OBJECT_ARRAYS else None
                np.testing.assert_array_equal(rec[name], g[name][i][:k])
    assert not z._row("object_tokens", 5).any()  # the failed row's empty chunk: fill values


def test_rows_of_a_shard_never_written_are_fill_values(tmp_path):
    write_job(tmp_path, shards=SHARDS[:1])
    z = ZarrImages(tmp_path)
    assert z.status.tolist() == [1] * 4 + [0] * 6 and z[6]["status"] == 0 and "object_tokens" not in z[6]
    assert not (tmp_path / "tokens.zarr/object_tokens/c/1").exists()
    assert not z._row("object_tokens", 6).any() and (z._row("keep_rank", 9) == -1).all()


def test_a_store_with_whole_shard_chunks_reads_back_identically(tmp_path):
    new = ZarrImages(write_job(tmp_path / "new").root)
    old_jd = JobDir(tmp_path / "old")
    open_old_store(old_jd.tokens, ROWS, SHARD, DIMS)
    group = open_store(old_jd.tokens, ROWS, SHARD, DIMS)  # a resumed older job keeps its layout
    assert "layout" not in group.attrs and group["object_tokens"].chunks == (SHARD, DIMS.K, DIMS.D)
    old = ZarrImages(write_job(old_jd.root, group).root)
    assert old.layout == "shard-chunks" and old.chunk_rows == SHARD and not old._direct  # blocks: whole shards
    for i in [*range(ROWS), *np.random.default_rng(1).permutation(ROWS)]:
        assert_same_record(old[i], new[i])


@pytest.mark.parametrize("compressors", [None, GzipCodec()], ids=["uncompressed", "gzip"])
def test_sharded_arrays_coded_otherwise_still_read_right(tmp_path, compressors):
    jd = JobDir(tmp_path / "other")
    group = open_old_store(jd.tokens, ROWS, SHARD, DIMS)  # attrs only: arrays replaced below
    group.attrs["layout"] = "sharded-rows"
    for spec in ARRAYS:
        shape = spec.shape(ROWS, DIMS.as_dict())
        if len(shape) > 1:
            group.create_array(spec.name, shape=shape, shards=(SHARD, *shape[1:]), chunks=(1, *shape[1:]),
                               dtype=spec.dtype, fill_value=spec.fill, compressors=compressors, overwrite=True)
    other = ZarrImages(write_job(jd.root, group).root)
    assert set(other._direct) == (set(record.TENSORS) if compressors is None else set())  # gzip: through zarr
    reference = ZarrImages(write_job(tmp_path / "ref").root)
    for i in range(ROWS):
        assert_same_record(other[i], reference[i])


def test_an_unknown_layout_is_refused(tmp_path):
    group = open_store(tmp_path / "tokens.zarr", ROWS, SHARD, DIMS)
    group.attrs["layout"] = "from-the-future"
    with pytest.raises(CacheError, match="from-the-future"):
        ZarrImages(tmp_path)
