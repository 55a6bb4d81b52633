"""Write stage + commit rule: both sinks hold the stage outputs; commits come last and verify."""

import json

import numpy as np
import pytest
import webdataset as wds
import zarr

from masktok.pipeline import commit as commits
from masktok.schemas.commits import read_commits, valid_commits
from masktok.schemas.jobdir import JobDir
from masktok.stages.write import TokenDims, WriteError, open_store, shard_rows

DIMS = TokenDims(K=5, D=8, C=6)


def finished_item(index, k, seed):
    rng = np.random.default_rng(seed)
    return {
        "index": index, "image_id": f"coco/{index:03d}.jpg", "path": f"/d/coco/{index:03d}.jpg",
        "width": 64 + index, "height": 48, "object_tokens": rng.standard_normal((k, DIMS.D)).astype(np.float32),
        "boxes": rng.uniform(0, 40, (k, 4)).astype(np.float32), "scores": rng.uniform(0, 1, k).astype(np.float32),
        "keep_rank": np.arange(k, dtype=np.int16), "inversion_loss": rng.uniform(0, 1, k).astype(np.float32),
        "global_token": rng.standard_normal(DIMS.D).astype(np.float32),
        "patch_tokens": rng.standard_normal((36, DIMS.C)).astype(np.float32),
        "patch_norm_mean": 3.5, "patch_norm_std": 0.25,
        "masks": [{"size": [48, 64 + index], "counts": b"abc"}] * k,
        "pairwise_iou": (np.triu(rng.uniform(0, 1, (k, k)), 1) + np.triu(rng.uniform(0, 1, (k, k)), 1).T
                         + np.eye(k)).astype(np.float16),
    }


def shard_items(start, n, failed=()):
    items = []
    for i in range(start, start + n):
        if i in failed:
            items.append({"index": i, "image_id": f"coco/{i:03d}.jpg", "error": {"stage": "decode", "reason": "truncated"}})
        else:
            items.append(finished_item(i, k=1 + i % DIMS.K, seed=i))
    return items[::-1]  # arrival order is not row order


@pytest.fixture
def job(tmp_path):
    jd = JobDir(tmp_path)
    group = open_store(jd.tokens, rows=8, shard_size=4, dims=DIMS)
    return jd, group


def test_zarr_and_webdataset_hold_what_the_stages_returned(job):
    jd, group = job
    items = shard_items(4, 4, failed={6})
    commit = commits.write_shard(jd, group, 1, 4, 8, items, DIMS, "sha256:f", rle_masks=True)
    assert commit["images_ok"] == 3 and commit["images_failed"] == 1
    assert commit["failures"] == [{"index": 6, "image_id": "coco/006.jpg", "stage": "decode", "reason": "truncated",
                                   "kind": "image"}]

    z = zarr.open_group(jd.tokens, mode="r")  # plain zarr, no masktok reader
    samples = {s["__key__"]: s for s in wds.WebDataset(str(jd.wds / "shard-000001.tar"), shardshuffle=False).decode()}
    assert sorted(samples) == ["000000004", "000000005", "000000006", "000000007"]
    for item in items:
        i = item["index"]
        meta = samples[f"{i:09d}"]["json"]
        assert z["image_id"][i] == meta["image_id"] == item["image_id"]
        if "error" in item:
            assert z["status"][i] == meta["status"] == 2 and meta["error"]["reason"] == "truncated"
            assert not z["object_tokens"][i].any()
            continue
        k = len(item["object_tokens"])
        assert z["status"][i] == meta["status"] == 1 and z["num_objects"][i] == meta["num_objects"] == k
        for name in ("object_tokens", "boxes", "scores", "keep_rank", "inversion_loss"):
            expect = np.asarray(item[name]).astype(z[name].dtype)
            np.testing.assert_array_equal(z[name][i, :k], expect)
            np.testing.assert_array_equal(samples[f"{i:09d}"][f"{name}.npy"], expect)
        assert (z["keep_rank"][i, k:] == -1).all() and not z["object_tokens"][i, k:].any()
        np.testing.assert_array_equal(z["patch_tokens"][i], item["patch_tokens"].astype(np.float16))
        assert z["patch_norm_mean"][i] == meta["patch_norm_mean"] == 3.5
        assert samples[f"{i:09d}"]["masks.json"][0]["counts"] == "abc"
        # record v2: the IoU matrix as a triangle, padded to K rows in Zarr, of the k rows in the sample
        square = np.zeros((DIMS.K, DIMS.K), np.float16)
        square[:k, :k] = item["pairwise_iou"]
        np.testing.assert_array_equal(z["mask_iou"][i], square[np.triu_indices(DIMS.K, 1)])
        np.testing.assert_array_equal(samples[f"{i:09d}"]["mask_iou.npy"],
                                      item["pairwise_iou"][np.triu_indices(k, 1)])
    assert z["status"][0] == 0  # rows of other shards untouched: pending


def test_commit_file_is_written_last(job, monkeypatch):
    jd, group = job
    real = commits.write_atomic

    def crash_on_commit(path, data):
        if path.parent == jd.commits:
            raise KeyboardInterrupt("killed before the commit")
        real(path, data)

    monkeypatch.setattr(commits, "write_atomic", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        commits.write_shard(jd, group, 0, 0, 4, shard_items(0, 4), DIMS, "sha256:f")
    assert (jd.wds / "shard-000000.tar").exists() and read_commits(jd) == {}


def test_verify_passes_a_clean_shard_and_names_a_flipped_byte(job):
    jd, group = job
    commit = commits.write_shard(jd, group, 0, 0, 4, shard_items(0, 4), DIMS, "sha256:f")
    assert commits.verify_shard(jd, group, commit) == []
    tar = jd.wds / "shard-000000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert commits.verify_shard(jd, group, commit) == ["shard-000000.tar: checksum differs from the commit"]


def test_verify_names_a_corrupted_array(job):
    jd, group = job
    commit = commits.write_shard(jd, group, 0, 0, 4, shard_items(0, 4), DIMS, "sha256:f", webdataset=False)
    group["scores"][1, 0] = 42.0  # a silent change behind the commit's back
    assert commits.verify_shard(jd, group, commit) == ["scores: checksum differs from the commit"]


def test_items_that_break_the_contract_are_refused(job):
    items = shard_items(0, 4)
    with pytest.raises(WriteError, match="need one item each"):
        shard_rows(items[:3], 0, 4, DIMS)
    items[0]["object_tokens"] = np.zeros((DIMS.K + 1, DIMS.D))
    with pytest.raises(WriteError, match="at most K=5"):
        shard_rows(items, 0, 4, DIMS)


def test_store_reopened_with_other_dims_is_refused(job):
    jd, _ = job
    tokens = open_store(jd.tokens, rows=8, shard_size=4, dims=DIMS)["object_tokens"]
    assert (tokens.shards, tokens.chunks) == ((4, 5, 8), (1, 5, 8))
    with pytest.raises(WriteError, match="was created for"):
        open_store(jd.tokens, rows=8, shard_size=4, dims=TokenDims(K=7, D=8, C=6))


def test_commits_are_read_back_by_shard(job):
    jd, group = job
    commits.write_shard(jd, group, 1, 4, 8, shard_items(4, 4), DIMS, "sha256:f")
    (jd.commits / ".shard-000000.json.tmp-1").write_text("{")  # a torn temp file is not a commit
    read = read_commits(jd)
    assert list(read) == [1] and read[1]["rows"] == [4, 8]
    assert json.loads(jd.commit_path(1).read_text())["zarr"]["status"] == read[1]["zarr"]["status"]


def test_status_is_written_last_and_unreadable_commits_are_reported(job, monkeypatch):
    jd, group = job
    order = []
    real_setitem = type(group["status"]).__setitem__

    def spy(self, key, value):
        order.append(self.basename)
        real_setitem(self, key, value)

    monkeypatch.setattr(type(group["status"]), "__setitem__", spy)
    commits.write_shard(jd, group, 0, 0, 4, shard_items(0, 4), DIMS, "sha256:f", manifest_digest="sha256:m")
    monkeypatch.undo()
    assert order[0] == "status" and order[-1] == "status" and set(order[1:-1]) == {a for a in group.array_keys()} - {"status"}
    jd.commit_path(0).write_text('{"shard": 0, "rows": [0')  # a torn commit file
    assert "unreadable commit file" in read_commits(jd)[0]["unreadable"]
    assert valid_commits(jd) == {}
