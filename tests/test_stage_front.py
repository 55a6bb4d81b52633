"""The front half end to end (decode -> masks -> background -> filter) for each mask source,
checked against the batch contract of masktok.stages."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from masktok.tiny.corpus import write_quirks
from masktok.schemas.spec import JobSpec
from masktok.stages.batch import ROW_KEYS
from masktok.stages.detect import DetectStage
from masktok.stages.topology import front_stages, run_stages
from masktok.stages.segment import SegmentStage


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("front") / "images"
    ids = write_quirks(random.Random(0), root / "quirks")
    return root, [{"index": i, "image_id": x, "path": str(root / x)} for i, x in enumerate(ids)]


def _check_contract(item: dict, top_k: int, max_objects: int | None) -> None:
    w, h = item["width"], item["height"]
    assert item["image"].shape == (h, w, 3) and item["image"].dtype == np.uint8
    rows = len(item["masks"])
    assert all(len(item[k]) == rows for k in ROW_KEYS)
    assert item["boxes"].dtype == item["scores"].dtype == item["mask_iou"].dtype == np.float32
    assert item["keep_rank"].dtype == np.int16
    assert all(m["size"] == [h, w] and isinstance(m["counts"], bytes) for m in item["masks"])
    assert item["boxes"][-1].tolist() == [0, 0, w, h] and item["scores"][-1] == 0
    assert ((item["boxes"] >= 0) & (item["boxes"] <= [w, h, w, h])).all()
    ranks = item["keep_rank"][:-1]
    kept = np.sort(ranks[ranks >= 0])
    assert kept.tolist() == list(range(len(kept)))  # ranks are 0..n-1 without gaps
    assert item["keep_rank"][-1] == (-1 if item["background_empty"] else len(kept))
    if max_objects is None:
        assert rows == top_k + 1
    else:
        assert rows <= max_objects + 1 and (ranks >= 0).all()


@pytest.mark.parametrize(
    ("source", "max_objects", "rows"), [("sam", None, 101), ("boxes", 3, 101), ("tiles", None, 55)]
)
def test_each_mask_source_produces_the_contract(corpus, tiny_checkpoints, source, max_objects, rows) -> None:
    root, batch = corpus
    spec = JobSpec.model_validate({
        "masks": {"source": source}, "segment": {"model_type": "tiny"},
        "filter": {"iou_threshold": 0.8, "max_objects": max_objects},
    })
    stages = front_stages(spec, root, tiny_checkpoints, "cpu")
    has_models = [type(s) for s in stages if isinstance(s, (DetectStage, SegmentStage))]
    assert has_models == {"sam": [DetectStage, SegmentStage], "boxes": [DetectStage], "tiles": []}[source]
    out = run_stages(stages, [dict(item) for item in batch])
    assert [item["image_id"] for item in out] == [item["image_id"] for item in batch]
    failures = {item["image_id"]: item["error"] for item in out if "error" in item}
    assert list(failures) == ["quirks/broken.jpg"] and failures["quirks/broken.jpg"]["stage"] == "decode"
    for item in out:
        if "error" not in item:
            _check_contract(item, rows - 1, max_objects)
