"""The record schema: the arrays of docs/jobdir.md ("tokens.zarr: the record"), one source of
truth (schemas/record.py)."""

import zarr

from masktok.schemas import record

DOCUMENTED_TABLE = {
    "image_id": ("N", "str"), "status": ("N", "uint8"), "width": ("N", "int32"), "height": ("N", "int32"),
    "num_objects": ("N", "int16"), "object_tokens": ("N,K,D", "float16"), "boxes": ("N,K,4", "float32"),
    "scores": ("N,K", "float32"), "keep_rank": ("N,K", "int16"), "inversion_loss": ("N,K", "float32"),
    "global_token": ("N,D", "float16"), "patch_tokens": ("N,P,C", "float16"),
    "patch_norm_mean": ("N", "float32"), "patch_norm_std": ("N", "float32"),
    "mask_iou": ("N,K2", "float16"),  # record v2
}


def test_arrays_match_the_documented_table():
    assert {a.name: (",".join(a.axes), a.dtype) for a in record.ARRAYS} == DOCUMENTED_TABLE


def test_concrete_shapes_for_the_papers_models():
    dims = {"K": 101, "D": 768, "C": 1024}
    assert record.BY_NAME["object_tokens"].shape(1000, dims) == (1000, 101, 768)
    assert record.BY_NAME["patch_tokens"].shape(1000, dims) == (1000, 36, 1024)
    assert record.BY_NAME["boxes"].shape(7, dims) == (7, 101, 4)
    assert record.record_shapes(dims)["global_token"] == (768,)
    assert record.record_shapes(dims)["image_id"] == ()
    assert record.BY_NAME["mask_iou"].shape(7, dims) == (7, 101 * 100 // 2)


def test_the_iou_triangle_is_row_major_and_a_leading_block_cuts_from_it():
    import numpy as np

    square = np.array([[1, 2, 3, 4], [2, 1, 5, 6], [3, 5, 1, 7], [4, 6, 7, 1]], dtype=np.float16)
    tri = record.upper_triangle(square)
    assert tri.tolist() == [2, 3, 4, 5, 6, 7]  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert record.leading_triangle(tri, 4, 3).tolist() == [2, 3, 5]
    assert np.array_equal(record.from_triangle(tri, 4), square - np.eye(4, dtype=np.float16))
    assert [a.name for a in record.arrays_of(1)] == [a.name for a in record.ARRAYS if a.name != "mask_iou"]


def test_unwritten_rows_read_as_pending_and_suppressed(tmp_path):
    """A store whose shards were never written reads back as 'nothing to trust yet'."""
    from masktok.stages.write import TokenDims, open_store

    dims = TokenDims(K=3, D=4, C=5)
    open_store(tmp_path / "tokens.zarr", rows=6, shard_size=4, dims=dims)
    z = zarr.open_group(tmp_path / "tokens.zarr", mode="r")
    assert z["status"][:].tolist() == [record.Status.PENDING] * 6
    assert (z["keep_rank"][:] == -1).all() and (z["num_objects"][:] == 0).all()
    assert z["image_id"][:].tolist() == [""] * 6
    assert z["object_tokens"].shape == (6, 3, 4) and z["patch_tokens"].shape == (6, 36, 5)


def test_every_array_is_either_a_json_scalar_or_an_npy_member():
    assert set(record.SCALARS) | set(record.TENSORS) == set(DOCUMENTED_TABLE)
    assert not set(record.SCALARS) & set(record.TENSORS)


def test_sample_keys_are_zero_padded_and_sort_like_the_manifest():
    keys = [record.sample_key(i) for i in (0, 9, 10, 123456)]
    assert keys == sorted(keys) and keys[0] == "000000000"
    assert all("." not in k and "/" not in k for k in keys)


def test_object_arrays_are_the_rows_along_k():
    assert record.OBJECT_ARRAYS == ("object_tokens", "boxes", "scores", "keep_rank", "inversion_loss")
    assert record.POOLED_PATCHES == record.POOLED_GRID**2 == 36
