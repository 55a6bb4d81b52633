"""The optional 12x12 patch grid (``write.patch_grid = 12``, issue 38 item 5): pooled exactly,
written to both sinks and verified, read by both readers, composed without a prune; a count
the cache cannot give is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from masktok.pipeline import commit as commits
from masktok.schemas.commits import valid_commits
from masktok.schemas.errors import TokenSpecError
from masktok.schemas.jobdir import JobDir
from masktok.schemas.record import FINE_PATCH_ARRAY
from masktok.schemas.errors import SpecError
from masktok.schemas.spec import JobSpec, apply_overrides, fingerprint, spec_from_dict
from masktok.stages.vision import pool_patch_grid
from masktok.stages.write import TokenDims
from masktok.tiny.cache import tiny_items, write_tiny_cache
from masktok.trainer.data.readers import WdsImages, ZarrImages
from masktok.trainer.visual.compose import compose, reduce_patches
from masktok.trainer.visual.token_spec import parse_spec, require_patches

FINE = FINE_PATCH_ARRAY.name
DIMS = TokenDims(K=6, D=16, C=24)


def direct(grid24: torch.Tensor, side: int) -> torch.Tensor:
    """[576, C] -> [side*side, C]: average pooling of the 24x24 grid, written out by hand
    (windows of 24/side, raster order), independent of the code under test."""
    c, w = grid24.shape[-1], 24 // side
    return grid24.double().reshape(side, w, side, w, c).mean(dim=(1, 3)).reshape(side * side, c)


def test_the_stored_12x12_grid_pools_to_what_direct_pooling_of_the_24x24_grid_gives() -> None:
    """Item 5's acceptance. The fp32 chain (the stage's pooling, then the trainer's) differs
    from direct pooling only by the order of fp32 sums: 1e-5 at values of a few units. What
    the cache holds is float16: each stored token is within half an ulp (2^-11 relative) of
    its exact value, and an average of such tokens within the same bound of the exact average,
    so the stored chain agrees to 2^-11 of the largest magnitude (plus the fp32 slack)."""
    x = torch.randn(1, 576, 1024, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    fine = pool_patch_grid(x, (24, 24), 12)[0]  # what the invert stage computes: [144, C]
    coarse = pool_patch_grid(x, (24, 24), 6)[0]  # and its 6x6 grid: [36, C]
    bound = float(x.abs().max()) * 2.0 ** -11 + 1e-5
    for n, side in ((144, 12), (16, 4), (9, 3), (36, 6), (4, 2), (1, 1)):
        want = direct(x[0], side)
        got = reduce_patches(fine, n, "pool") if n in (144, 16) else reduce_patches(coarse, n, "pool")
        assert torch.allclose(got.double(), want, rtol=0, atol=1e-5), n
        assert torch.allclose(reduce_patches(fine.half().float(), n, "pool").double() if n in (144, 16) else
                              reduce_patches(coarse.half().float(), n, "pool").double(), want, rtol=0, atol=bound), n
        if side in (6, 3):  # the 12x12 grid pools to these exactly as well
            via_fine = torch.nn.functional.avg_pool2d(fine.T.reshape(1, -1, 12, 12), 12 // side).flatten(2)[0].T
            assert torch.allclose(via_fine.double(), want, rtol=0, atol=1e-5), n


def test_composing_from_a_record_takes_each_count_from_its_grid_exactly() -> None:
    item = tiny_items(1, DIMS, patch_grid=12)[0]
    grid24 = torch.from_numpy(item["patch_grid_24"]).reshape(576, DIMS.C)
    record = {**item, "keep_rank": item["keep_rank"]}
    bound = float(grid24.abs().max()) * 2.0 ** -11
    for n, side in ((144, 12), (36, 6), (16, 4), (9, 3)):
        tokens = compose(record, parse_spec(f"cls,patch:{n},obj:3"))
        assert tokens.patch.shape == (n, DIMS.C)
        assert torch.allclose(tokens.patch.double(), direct(grid24, side), rtol=0, atol=bound), n


@pytest.fixture(scope="module")
def fine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("fine"), n=8, dims=DIMS, failed=(5,), patch_grid=12)


def test_a_12x12_cache_round_trips_through_both_readers_and_composes_144_and_16(fine_cache: Path) -> None:
    items = {it["index"]: it for it in tiny_items(8, DIMS, failed=(5,), patch_grid=12)}
    zarr_images = ZarrImages(fine_cache)
    assert zarr_images.patch_grid == 12 and FINE in zarr_images.tensors
    by_zarr = {i: zarr_images[i] for i in range(len(zarr_images))}
    by_wds = {r["index"]: r for r in WdsImages(fine_cache, 0, 1, shuffle=False)}
    assert sorted(by_wds) == sorted(by_zarr) == list(range(8))
    for spec in ("cls,patch:144,obj:3", "cls,patch:16,obj:3"):
        require_patches(parse_spec(spec), zarr_images.patch_grid, fine_cache)  # nothing refused
    for i, item in items.items():
        if "error" in item:
            assert FINE not in by_zarr[i] and FINE not in by_wds[i]
            continue
        for rec in (by_zarr[i], by_wds[i]):
            assert rec[FINE].dtype == np.float16 and rec[FINE].shape == (144, DIMS.C)
            assert np.array_equal(rec[FINE], item[FINE]) and np.array_equal(rec["patch_tokens"], item["patch_tokens"])
            grid24 = torch.from_numpy(item["patch_grid_24"]).reshape(576, DIMS.C)
            bound = float(grid24.abs().max()) * 2.0 ** -11
            t144 = compose(rec, parse_spec("cls,patch:144,obj:3")).patch
            t16 = compose(rec, parse_spec("cls,patch:16,obj:3")).patch
            assert t144.shape == (144, DIMS.C) and t16.shape == (16, DIMS.C)
            assert torch.equal(t144, torch.from_numpy(item[FINE].astype(np.float32)))
            assert torch.allclose(t16.double(), direct(grid24, 4), rtol=0, atol=bound)


def test_on_a_6x6_cache_patch_16_is_refused_in_one_line(tmp_path: Path) -> None:
    cache = write_tiny_cache(tmp_path / "coarse", n=4, dims=DIMS, failed=())
    images = ZarrImages(cache)
    assert images.patch_grid == 6 and FINE not in images.tensors
    assert not (JobDir(cache).tokens / FINE).exists()
    for n in (16, 144):
        spec = parse_spec(f"cls,patch:{n},obj:5")
        with pytest.raises(TokenSpecError) as info:
            require_patches(spec, images.patch_grid, cache)
        message = str(info.value)
        assert "\n" not in message and "1, 4, 9 or 36" in message and "write.patch_grid=12" in message
        with pytest.raises(TokenSpecError) as info:  # and a record without the grid is never pruned
            compose(images[0], spec)
        assert "\n" not in str(info.value) and "1, 4, 9 or 36" in str(info.value)
    require_patches(parse_spec("cls,patch:9,obj:5"), images.patch_grid, cache)
    require_patches(parse_spec("cls,patch:23:prune,obj:5"), images.patch_grid, cache)


def test_verify_covers_the_12x12_array(tmp_path: Path) -> None:
    cache = write_tiny_cache(tmp_path / "job", n=8, dims=DIMS, failed=(5,), patch_grid=12)
    jd = JobDir(cache)
    import zarr

    group = zarr.open_group(jd.tokens, mode="r+")
    commit = valid_commits(jd)[1]
    assert FINE in commit["zarr"] and commits.verify_shard(jd, group, commit) == []
    shard_file = jd.tokens / FINE / "c" / "1" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[40] ^= 0xFF  # inside the first row's zstd frame
    shard_file.write_bytes(bytes(data))
    problems = commits.verify_shard(jd, group, commit)
    assert len(problems) == 1 and problems[0].startswith(f"{FINE}: "), problems
    assert commits.verify_shard(jd, group, valid_commits(jd)[0]) == []


def test_the_key_is_left_out_of_the_fingerprint_at_6_and_checked() -> None:
    spec = JobSpec()
    assert spec.write.patch_grid == 6  # default: the fingerprint test of test_spec.py holds
    assert fingerprint(spec_from_dict(apply_overrides({}, ["write.patch_grid=6"]))) == fingerprint(spec)
    fine = spec_from_dict(apply_overrides({}, ["write.patch_grid=12"]))
    assert fine.write.patch_grid == 12 and fingerprint(fine) != fingerprint(spec)
    with pytest.raises(SpecError, match="patch_grid"):
        spec_from_dict(apply_overrides({}, ["write.patch_grid=16"]))


def test_train_refuses_patch_16_on_a_6x6_cache_before_loading_anything(tmp_path: Path) -> None:
    from masktok.tiny.cache import write_corpus
    from masktok.trainer.runtime import TrainConfig
    from masktok.trainer.train import train

    cache = write_tiny_cache(tmp_path / "coarse", n=4, dims=DIMS, failed=())
    data = write_corpus(tmp_path / "data.json", 4)
    cfg = TrainConfig(stage=1, cache=cache, data=data, llm=tmp_path / "no-llm", out=tmp_path / "out",
                      tokens="cls,patch:16,obj:5", device="cpu")
    with pytest.raises(TokenSpecError, match=r"keeps the 6x6 patch grid.*1, 4, 9 or 36 tokens, not 16"):
        train(cfg)


def test_a_clip_grid_12_does_not_divide_refuses_the_12x12_grid() -> None:
    from masktok.stages.checkpoints import token_dims

    assert token_dims(spec_from_dict({"write": {"patch_grid": 12}})).C == 1024  # ViT-L/14-336: 24x24
    with pytest.raises(SpecError, match="7x7 grid, which 12 does not divide"):
        token_dims(spec_from_dict({"write": {"patch_grid": 12}, "invert": {"model": "ViT-B-32"}}))
