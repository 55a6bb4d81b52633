"""How items travel between actor pools (pipeline/transport.py, pipeline/graph.py): large
arrays as tensor columns through Ray Data's own block conversion, the rest pickled; arrays
no later stage reads are not carried."""

from __future__ import annotations

import numpy as np
import pytest

from masktok.pipeline.graph import columns_after
from masktok.stages.topology import topology
from masktok.pipeline.transport import ARRAY_COLUMNS, from_columns, item_of, to_columns
from masktok.schemas.spec import JobSpec


def _items() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"index": 0, "masks": [{"size": [3, 4], "counts": b"x"}], "boxes": np.ones((2, 4), np.float32),
         "image": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
         "clip_masks": rng.random((5, 8, 8), dtype=np.float32)},
        {"index": 1, "error": {"stage": "decode", "reason": "missing file"}},  # no arrays at all
        {"index": 2, "image": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),  # same shape as item 0
         "clip_masks": np.zeros((0, 8, 8), np.float32)},  # K = 0 is a real value, not a placeholder
    ]


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


def test_items_survive_ray_datas_block_conversion() -> None:
    from ray.data.block import BlockAccessor

    items = _items()
    batch = to_columns(items, ("image", "clip_masks"))
    assert set(batch) == {"item", "image", "clip_masks"}
    block = BlockAccessor.batch_to_block(batch)  # what Ray Data stores in the object store
    back = from_columns(BlockAccessor.for_block(block).to_batch_format("numpy"))
    assert all(_same(a, b) for a, b in zip(items, back)) and len(back) == 3
    assert back[2]["clip_masks"].shape == (0, 8, 8)
    rows = list(BlockAccessor.for_block(block).iter_rows(public_row_format=True))
    assert _same(item_of(rows[0]), items[0])


def test_arrays_not_named_are_not_carried() -> None:
    (out,) = from_columns(to_columns(_items()[:1], ("clip_masks",)))
    assert "image" not in out and out["clip_masks"].shape == (5, 8, 8) and out["index"] == 0


@pytest.mark.parametrize("source, after", [
    ("sam", {"decode": ("detector_pixels", "sam_pixels", "clip_pixels", "clip_masks"),
             "detect": ("sam_pixels", "clip_pixels", "clip_masks"), "segment": ("clip_pixels", "clip_masks"),
             "filter": ("clip_pixels", "clip_masks"), "invert": ()}),
    ("tiles", {"decode": ("clip_pixels", "clip_masks"), "filter": ("clip_pixels", "clip_masks"), "invert": ()}),
])
def test_each_array_is_carried_only_until_its_last_reader(source, after) -> None:
    groups = topology(JobSpec.model_validate({"masks": {"source": source}}))
    assert {g.name: columns_after(groups, i) for i, g in enumerate(groups)} == after
    assert set(ARRAY_COLUMNS) >= {c for cols in after.values() for c in cols}
