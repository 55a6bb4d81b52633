"""Re-filtering objects at any IoU threshold from the stored IoU matrix (record v2):
``obj:K@iouX`` gives exactly the keep_rank the filter stage gives at X."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from masktok.schemas.errors import TokenSpecError
from masktok.schemas.jobdir import JobDir
from masktok.schemas.spec import FilterSpec
from masktok.stages.background import BackgroundStage
from masktok.stages.filter import FilterStage
from masktok.stages.masks import box_masks
from masktok.stages.write import TokenDims, open_store
from masktok.trainer.visual.compose import compose
from masktok.trainer.data.readers import WdsImages, ZarrImages
from masktok.trainer.visual.refilter import refiltered_keep_rank, require_refilterable
from masktok.trainer.visual.token_spec import parse_spec

W, H = 120, 100
DIMS = TokenDims(K=12, D=8, C=4)
PLAN_IOU = 0.8
# pairs of boxes overlapping by IoU ~0.2-0.95, a thin box (an empty mask), a lone box
BOXES = [[0, 0, 40, 40], [2, 2, 42, 42], [10, 0, 50, 40], [20, 20, 60, 60],  # IoUs ~0.9, 0.6, 0.3 ...
         [60, 50, 100, 90], [62, 52, 100, 92], [70, 60, 110, 100],
         [30, 70, 30.2, 95],  # thinner than half a pixel: an empty mask, never kept
         [100, 0, 120, 20], [0, 60, 25, 100], [5, 62, 28, 100]]
SCORES = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.99, 0.6, 0.55, 0.5]


def _item(index: int) -> dict:
    boxes = np.array(BOXES, np.float32)
    rng = np.random.default_rng(index)
    item = {"index": index, "image_id": f"im{index}.jpg", "path": "x", "width": W, "height": H,
            "boxes": boxes, "scores": np.array(SCORES, np.float32)[rng.permutation(len(SCORES))],
            "masks": box_masks(boxes, W, H), "mask_iou": np.ones(len(boxes), np.float32)}
    return BackgroundStage()([item])[0]


def _finish(item: dict) -> dict:
    k = len(item["masks"])
    rng = np.random.default_rng(0)
    item.update(object_tokens=rng.normal(size=(k, DIMS.D)).astype(np.float16),
                inversion_loss=np.zeros(k, np.float32), global_token=np.ones(DIMS.D, np.float16),
                patch_tokens=np.ones((36, DIMS.C), np.float16), patch_norm_mean=1.0, patch_norm_std=0.1)
    return item


def _stage(item: dict, threshold: float, max_objects: int | None = None) -> dict:
    return FilterStage(FilterSpec(iou_threshold=threshold, max_objects=max_objects))([copy.deepcopy(item)])[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple:
    """Three images through background + filter (plan threshold 0.8), written and committed."""
    from masktok.pipeline.commit import write_shard

    jd = JobDir(tmp_path_factory.mktemp("refilter"))
    raw = [_item(i) for i in range(3)]
    group = open_store(jd.tokens, 3, 4, DIMS, filter_settings={"iou_threshold": PLAN_IOU, "max_objects": None})
    write_shard(jd, group, 0, 0, 3, [_finish(_stage(it, PLAN_IOU)) for it in raw], DIMS, "sha256:x")
    return jd.root, raw


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9])
def test_refiltering_the_stored_ious_equals_the_filter_stage_at_that_threshold(cache, threshold: float) -> None:
    root, raw = cache
    zarr_records = [ZarrImages(root)[i] for i in range(3)]
    wds_records = sorted(WdsImages(root, shuffle=False), key=lambda r: r["index"])
    for rec, wds_rec, item in zip(zarr_records, wds_records, raw):
        expected = _stage(item, threshold)["keep_rank"]
        assert np.array_equal(refiltered_keep_rank(rec, threshold), expected), (threshold, rec["image_id"])
        assert np.array_equal(refiltered_keep_rank(wds_rec, threshold), expected)
        assert np.array_equal(refiltered_keep_rank(rec, PLAN_IOU), rec["keep_rank"])  # the plan's own


def test_the_thresholds_change_which_objects_are_kept(cache) -> None:
    """The three thresholds give three different selections (else the test above proves little),
    and the empty mask is never kept."""
    _, raw = cache
    kept = {t: int((_stage(raw[0], t)["keep_rank"] >= 0).sum()) for t in (0.3, 0.5, 0.9)}
    assert kept[0.3] < kept[0.5] < kept[0.9], kept
    assert all(_stage(raw[0], t)["keep_rank"][7] == -1 for t in (0.3, 0.5, 0.9, 1.0))


def test_an_iou_spec_composes_the_refiltered_objects(cache) -> None:
    root, _ = cache
    rec = ZarrImages(root)[0]
    spec = parse_spec("cls,patch:1,obj:20@iou0.3")
    assert str(spec) == "cls,patch:1,obj:20@iou0.3"
    n = int((refiltered_keep_rank(rec, 0.3) >= 0).sum())
    assert len(compose(rec, spec).objects) == n < len(compose(rec, parse_spec("cls,patch:1,obj:20")).objects)


def test_iou_specs_are_refused_where_they_cannot_be_exact(tmp_path) -> None:
    from masktok.tiny.cache import write_tiny_cache

    v1 = ZarrImages(write_tiny_cache(tmp_path / "v1", record_version=1))
    assert v1.version == 1 and "mask_iou" not in v1[0]
    with pytest.raises(TokenSpecError, match="version 1"):
        require_refilterable(v1.version, v1.filter, "the cache")
    with pytest.raises(TokenSpecError, match="record version 2"):
        compose(v1[0], parse_spec("obj:5@iou0.5"))
    with pytest.raises(TokenSpecError, match="max_objects=20"):
        require_refilterable(2, {"iou_threshold": 0.8, "max_objects": 20}, "the cache")
    for bad in ("obj:5@iou0", "obj:5@iou1.5", "obj:5@x0.5", "patch:9@iou0.5"):
        with pytest.raises(TokenSpecError):
            parse_spec(bad)
