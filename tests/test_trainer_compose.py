"""Token composition: spec parsing, counts of the paper's settings, patch pooling/pruning,
object selection, the box-centre embedding, the scaling modes and the cache statistics,
each against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from masktok.schemas.errors import TokenSpecError
from masktok.trainer.visual.compose import all_rows, compose, object_rows, reduce_patches, select_objects
from masktok.trainer.visual.compose import box_center_embedding, sincos_2d
from masktok.trainer.visual.scaling import CacheStats, scale_tokens
from masktok.trainer.visual.token_spec import DEFAULT_SPEC, FILTERED_SPEC, PAPER_SPECS, paper_budget, parse_spec, prune_indices

D, C = 32, 8


def full_record(objects: int = 100, bg_empty: bool = False) -> dict:
    """An image with ``objects`` kept objects (ranked in reverse row order) + background."""
    k = objects + 1
    rank = np.arange(k, dtype=np.int16)
    rank[:objects] = rank[:objects][::-1]
    if bg_empty:
        rank[-1] = -1
    return {"width": 200, "height": 100, "patch_norm_mean": 10.0, "patch_norm_std": 3.0,
            "global_token": np.ones(D, np.float16), "patch_tokens": np.zeros((36, C), np.float16),
            "object_tokens": np.zeros((k, D), np.float16), "boxes": np.tile(np.float32([0, 0, 200, 100]), (k, 1)),
            "keep_rank": rank, "num_objects": k}


def filtered_record() -> dict:
    """101 rows as the filter leaves a real image: 100 detector rows in confidence order, of
    which only 30 were kept (the others suppressed, rows 40 and 41 empty masks, keep_rank -1
    too), and an empty background (every pixel covered)."""
    rec = full_record()
    rank = np.full(101, -1, np.int16)
    kept = np.arange(0, 90, 3)  # rows 0, 3, ..., 87: 30 kept, in confidence order
    rank[kept] = np.arange(30)
    rec["keep_rank"] = rank
    rec["object_tokens"] = np.arange(1, 102, dtype=np.float16)[:, None].repeat(D, 1)  # row i holds i + 1
    return rec


@pytest.mark.parametrize("total", sorted(PAPER_SPECS))
def test_paper_token_counts(total: int) -> None:
    spec = parse_spec(PAPER_SPECS[total])
    assert len(compose(full_record(), spec)) == total == spec.max_tokens(101)


def test_training_default_is_all_138_tokens_even_where_the_filter_suppressed_rows() -> None:
    """Paper 4.3: one model trained on 138 tokens; 3.5: 100 masks + the background. Suppressed
    rows, empty masks and the empty background all give their token in training."""
    rec = filtered_record()
    v = compose(rec, parse_spec(DEFAULT_SPEC))
    assert DEFAULT_SPEC == PAPER_SPECS[138] == "cls,patch:36,obj:101:all"
    assert len(v) == 138 and (len(v.glob), len(v.patch), len(v.objects)) == (1, 36, 101)
    pe = box_center_embedding(torch.from_numpy(rec["boxes"]), 200.0, 100.0, D)
    assert ((v.objects - pe)[:, 0] == torch.arange(1, 102, dtype=torch.float32)).all()  # stored order, bg last
    # the filtered composition at the same budget: only the 30 kept objects (empty background dropped)
    filtered = compose(rec, parse_spec(FILTERED_SPEC))
    assert len(filtered.objects) == 30 and len(filtered) == 67


def test_test_time_obj_k_keeps_the_paper_rule_iou_filter_then_confidence() -> None:
    rec = filtered_record()
    rows = object_rows(rec, parse_spec("obj:5"))
    assert rows.tolist() == [0, 3, 6, 9, 12]  # kept rows by keep_rank; background empty: 5 objects
    assert len(compose(rec, parse_spec(PAPER_SPECS[57]))) == 57  # 1 + 36 + 20 of the 30 kept
    # obj:K:all is confidence alone (no IoU filter): the first K-1 rows, then the background
    assert object_rows(rec, parse_spec("obj:5:all")).tolist() == [0, 1, 2, 3, 100]
    assert all_rows(0, None).tolist() == [] and all_rows(3, 1).tolist() == [2]


def test_paper_budgets_name_only_the_paper_settings() -> None:
    assert paper_budget("obj:101:all,patch:36,cls") == 138 and paper_budget("cls,patch:9,obj:5") == 15
    assert paper_budget(FILTERED_SPEC) is None


def test_spec_parsing_and_errors() -> None:
    s = parse_spec("obj:5, patch:9 ,cls")
    assert (s.cls, s.patches, s.patch_mode, s.objects) == (True, 9, "pool", 5)
    assert str(s) == "cls,patch:9,obj:5" and str(parse_spec(str(s))) == str(s)
    assert parse_spec("patch:23:prune").patch_mode == "prune" and str(parse_spec("patch:9:prune")) == "patch:9:prune"
    assert str(parse_spec("patch:23:prune")) == "patch:23:prune"
    assert len(compose(full_record(), parse_spec("patch:23:prune"))) == 23
    assert len(compose(full_record(), parse_spec("cls,obj"))) == 102
    assert str(parse_spec("obj:all")) == "obj:all" and str(parse_spec("obj:101:all")) == "obj:101:all"
    assert str(parse_spec("obj:5:filtered")) == "obj:5"
    for bad in ("", "cls,cls", "patch:0", "patch:37", "patch:23:pool", "obj:0", "objs:5", "patch:x", "patch:9:avg",
                "obj:5:most", "obj:all:5", "obj:5:all@iou0.5"):
        with pytest.raises(TokenSpecError):
            parse_spec(bad)


@pytest.mark.parametrize("n", [23, 25])
def test_a_count_the_6x6_grid_cannot_pool_to_is_refused_in_one_line(n: int) -> None:
    """A count no cached grid pools to is refused (never a random prune), naming what the
    grids give. Table 3's 16 (4x4 pooling of the 24x24 grid) needs the 12x12 grid: refused on
    a 6x6 cache when the cache is opened (tests/test_patch_grid.py)."""
    with pytest.raises(TokenSpecError) as info:
        parse_spec(f"cls,patch:{n},obj:5")
    message = str(info.value)
    assert "\n" not in message and "1, 4, 9 or 36" in message and f"patch:{n}:prune" in message


def test_patch_pooling_and_pruning_values() -> None:
    patch = torch.arange(36, dtype=torch.float32)[:, None].repeat(1, 2)  # token i holds i (raster order)
    pooled9 = reduce_patches(patch, 9, "pool")[:, 0]
    assert pooled9.tolist() == [3.5, 5.5, 7.5, 15.5, 17.5, 19.5, 27.5, 29.5, 31.5]  # 2x2 windows: (0,1,6,7)/4 ...
    assert reduce_patches(patch, 4, "pool")[:, 0].tolist() == [7.0, 10.0, 25.0, 28.0]  # 3x3 windows
    assert reduce_patches(patch, 1, "pool")[:, 0].tolist() == [17.5]
    assert reduce_patches(patch, 9, "max")[:, 0].tolist() == [7, 9, 11, 19, 21, 23, 31, 33, 35]
    assert torch.equal(reduce_patches(patch, 36, "pool"), patch)
    idx = prune_indices(23)
    expected = np.sort(np.random.default_rng(0).permutation(36)[:23])
    assert idx.tolist() == expected.tolist() and len(set(idx.tolist())) == 23
    assert reduce_patches(patch, 23, "prune")[:, 0].tolist() == expected.astype(float).tolist()


def test_object_selection_rank_order_and_background() -> None:
    rank = np.array([2, -1, 0, 1, 3], np.int16)  # row 1 suppressed, row 4 = background
    assert select_objects(rank, None).tolist() == [2, 3, 0, 4]
    assert select_objects(rank, 3).tolist() == [2, 3, 4]  # background counts as one and comes last
    assert select_objects(rank, 1).tolist() == [4]
    empty_bg = np.array([2, -1, 0, 1, -1], np.int16)
    assert select_objects(empty_bg, 3).tolist() == [2, 3, 0]  # empty background dropped
    assert len(compose(full_record(bg_empty=True), parse_spec("obj:5"))) == 5
    assert select_objects(np.zeros(0, np.int16), 5).tolist() == []


def test_box_centre_embedding_hand_computed() -> None:
    pe = box_center_embedding(torch.tensor([[0.0, 0.0, 100.0, 50.0]]), 200.0, 100.0, 8)[0]
    a = 0.25 * 2 * math.pi  # cx = cy = 0.25; D=8: 2 frequencies 2pi, 2pi/100
    b = 0.25 * 2 * math.pi / 100
    expected = [math.sin(a), math.cos(a), math.sin(b), math.cos(b)] * 2
    assert torch.allclose(pe, torch.tensor(expected), atol=1e-6)
    pe2 = sincos_2d(torch.tensor([0.5]), torch.tensor([0.0]), 8)[0]
    assert torch.allclose(pe2, torch.tensor([0.0, -1.0, math.sin(math.pi / 100), math.cos(math.pi / 100),
                                             0.0, 1.0, 0.0, 1.0]), atol=1e-6)
    with pytest.raises(ValueError):
        sincos_2d(torch.zeros(1), torch.zeros(1), 6)


def test_objects_get_their_box_embedding_added() -> None:
    rec = full_record(objects=3)
    rec["object_tokens"] = np.random.default_rng(0).normal(size=(4, D)).astype(np.float16)
    rec["boxes"][0] = [20, 10, 60, 30]
    v = compose(rec, parse_spec("obj"), "none")
    rows = select_objects(rec["keep_rank"], None)
    pe = box_center_embedding(torch.from_numpy(rec["boxes"][rows]), 200.0, 100.0, D)
    assert torch.allclose(v.objects - torch.from_numpy(rec["object_tokens"][rows].astype(np.float32)), pe, atol=1e-6)
    assert rows.tolist() == [2, 1, 0, 3]


STATS = CacheStats(patch_norm_mean=20.0, patch_norm_std=4.0, global_norm_mean=2.0, global_norm_std=1.0,
                   object_norm_mean=4.0, object_norm_std=2.0, images=1)


def test_scaling_modes_hand_computed() -> None:
    t = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # norms 5 and 0
    assert scale_tokens(t, "object", "none", 10, 3).tolist() == t.tolist()
    assert torch.allclose(scale_tokens(t, "object", "per-image", 10, 3), torch.tensor([[6.0, 8.0], [0, 0]]))
    assert torch.allclose(scale_tokens(t, "global", "dataset-global", 10, 3, STATS), torch.tensor([[12.0, 16.0], [0, 0]]))
    # c7, object: z = (5 - 4) / 2 = 0.5 -> norm 10 + 3 * 0.5 = 11.5
    assert torch.allclose(scale_tokens(t, "object", "c7", 10, 3, STATS), torch.tensor([[6.9, 9.2], [0, 0]]))
    # c7, global: z = (5 - 2) / 1 = 3 -> norm 10 + 3 * 3 = 19
    assert torch.allclose(scale_tokens(t, "global", "c7", 10, 3, STATS), torch.tensor([[11.4, 15.2], [0, 0]]))
    # far below its type's mean: the norm is floored, the direction kept
    low = scale_tokens(torch.tensor([[0.6, 0.8]]), "global", "c7", 1.0, 1.0, CacheStats(1, 1, 100, 1, 1, 1, 1))
    assert 0 < low.norm() < 1e-5 and low[0, 1] > low[0, 0] > 0
    with pytest.raises(ValueError):
        scale_tokens(t, "object", "c7", 10, 3, None)


def test_compose_scales_global_and_objects_not_patches() -> None:
    rec = full_record(objects=2)
    rec["global_token"] = np.full(D, 0.5, np.float16)
    rec["object_tokens"] = np.full((3, D), 2.0, np.float16)
    rec["patch_tokens"] = np.full((36, C), 7.0, np.float16)
    v = compose(rec, parse_spec("cls,patch:36,obj"), "per-image")
    assert math.isclose(float(v.glob.norm()), 10.0, rel_tol=1e-5)
    pe = box_center_embedding(torch.from_numpy(rec["boxes"][:3]), 200.0, 100.0, D)
    assert torch.allclose((v.objects - pe).norm(dim=-1), torch.full((3,), 10.0), rtol=1e-5)
    assert torch.all(v.patch == 7.0)


def _scaling_record() -> dict:
    """Hand-made norms (all exact in float16, no ties at a floor or threshold): 18 pooled patch
    tokens of norm 3 and 18 of norm 5 (mean 4, population std 1); the record's 576-token
    statistics 10 and 3; object rows of norms 1, 1, 3, 3 (mean 2, std 1), background last."""
    rec = full_record(objects=3)
    patch = np.zeros((36, C), np.float16)
    patch[:18, 0], patch[18:, 1] = 3.0, 5.0
    objects = np.zeros((4, D), np.float16)
    objects[0, 0], objects[1, 1], objects[2, 2], objects[3, 3] = 1.0, 1.0, 3.0, 3.0
    rec.update(patch_tokens=patch, object_tokens=objects, global_token=np.full(D, 0.5, np.float16))
    return rec


def _object_norms(v, rec: dict, rows: list[int]) -> list[float]:
    pe = box_center_embedding(torch.from_numpy(rec["boxes"][rows]), 200.0, 100.0, D)
    return [round(float(x), 4) for x in (v.objects - pe).norm(dim=-1)]


def test_default_scaling_is_per_image_mean_and_std_of_the_pooled_patch_norms() -> None:
    """n' = mu_p + sigma_p (n - m_o) / s_o: z = -1, -1, 1, 1 -> 4 - 1 = 3 and 4 + 1 = 5; the
    global token (one per image, z = 0) gets mu_p = 4. The unpooled variant uses 10 and 3."""
    from masktok.trainer.train import DEFAULT_SCALING

    rec = _scaling_record()
    rows = select_objects(rec["keep_rank"], None).tolist()  # [2, 1, 0, 3]: rank order, background last
    v = compose(rec, parse_spec("cls,patch:36,obj"), DEFAULT_SCALING)
    assert DEFAULT_SCALING == "per-image-std"
    assert _object_norms(v, rec, rows) == [5.0, 3.0, 3.0, 5.0] and round(float(v.glob.norm()), 4) == 4.0
    assert torch.equal(v.patch, torch.from_numpy(rec["patch_tokens"].astype(np.float32)))  # patches untouched
    u = compose(rec, parse_spec("cls,patch:36,obj"), "per-image-std-unpooled")
    assert _object_norms(u, rec, rows) == [13.0, 7.0, 7.0, 13.0] and round(float(u.glob.norm()), 4) == 10.0
    # the object statistics are those of all the image's rows: a pruned spec keeps the tokens' values
    pruned = compose(rec, parse_spec("cls,patch:9,obj:2"), DEFAULT_SCALING)
    assert _object_norms(pruned, rec, [2, 3]) == [5.0, 5.0]


def test_per_image_std_of_a_single_object_row_is_the_patch_mean() -> None:
    t = torch.tensor([[3.0, 4.0]])  # one row: no spread of its own, z = 0
    assert torch.allclose(scale_tokens(t, "object", "per-image-std", 4.0, 1.0, own=(5.0, 0.0)), torch.tensor([[2.4, 3.2]]))
    low = scale_tokens(t, "object", "per-image-std", 1.0, 1.0, own=(100.0, 1.0))  # z = -95: floored, direction kept
    assert 0 < low.norm() < 1e-5 and low[0, 1] > low[0, 0] > 0


def test_cache_stats_pool_the_per_image_statistics(tmp_path) -> None:
    from masktok.stages.write import TokenDims
    from masktok.trainer.data.stats import cache_stats
    from masktok.tiny.cache import tiny_items, write_tiny_cache

    dims = TokenDims(K=6, D=16, C=24)
    job = write_tiny_cache(tmp_path / "job", n=7, shard_size=3, dims=dims, failed=(2,))
    items = [it for it in tiny_items(7, dims, failed=(2,)) if "error" not in it]
    mu = np.array([it["patch_norm_mean"] for it in items], np.float32).astype(np.float64)
    sd = np.array([it["patch_norm_std"] for it in items], np.float32).astype(np.float64)
    gn = np.array([np.linalg.norm(it["global_token"].astype(np.float64)) for it in items])
    on = np.concatenate([np.linalg.norm(it["object_tokens"].astype(np.float64), axis=-1)[it["keep_rank"] >= 0]
                         for it in items])
    s = cache_stats(job)
    assert s.images == 6
    assert math.isclose(s.patch_norm_mean, mu.mean(), rel_tol=1e-9)
    assert math.isclose(s.patch_norm_std, math.sqrt((sd ** 2 + mu ** 2).mean() - mu.mean() ** 2), rel_tol=1e-6)
    assert math.isclose(s.global_norm_mean, gn.mean(), rel_tol=1e-9) and math.isclose(s.global_norm_std, gn.std(), rel_tol=1e-6)
    assert math.isclose(s.object_norm_mean, on.mean(), rel_tol=1e-9) and math.isclose(s.object_norm_std, on.std(), rel_tol=1e-6)
