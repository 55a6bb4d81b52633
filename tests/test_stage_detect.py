"""Detect stage: class-agnostic top-k (one box per query), pixel xyxy clipped, batches of
mixed sizes equal one image at a time, the loaded tiny preset equals the in-memory one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from masktok.models import load_model
from masktok.models.detector import build_tiny_detector
from masktok.schemas.errors import ModelLoadError
from masktok.stages.detect import DetectStage, class_agnostic_top_k, query_class_top_k, to_pixel_xyxy

SIZES = [(320, 240), (240, 320), (320, 240), (500, 200)]  # (width, height); two share a shape


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for w, h in SIZES]


def _items(images: list[np.ndarray]) -> list[dict]:
    return [{"index": i, "image_id": f"{i}.jpg", "path": f"{i}.jpg", "image": im,
             "width": im.shape[1], "height": im.shape[0]} for i, im in enumerate(images)]


@pytest.fixture(scope="module")
def stage(tiny_checkpoints) -> DetectStage:
    return DetectStage(*load_model("detector", tiny_checkpoints["detector"], device="cpu"), top_k=100)


def test_top_k_is_one_box_per_query_by_best_class_probability() -> None:
    logits = torch.tensor([[0.0, 3.0], [2.0, 2.5], [-1.0, 0.5], [4.0, -9.0]])
    boxes = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    scores, kept, queries = class_agnostic_top_k(logits, boxes, k=3)
    assert queries.tolist() == [3, 0, 1]
    assert torch.allclose(scores, torch.sigmoid(torch.tensor([4.0, 3.0, 2.5])))
    assert torch.equal(kept, boxes[[3, 0, 1]])
    assert class_agnostic_top_k(logits, boxes, k=10)[2].tolist() == [3, 0, 1, 2]


def test_query_class_top_k_is_deformable_detrs_post_processing_and_repeats_a_query() -> None:
    """detect.selection = "query-class": the top k over query x class probabilities; query 1
    is confident in both classes and gives its box twice."""
    logits = torch.tensor([[0.0, 3.0], [2.0, 2.5], [-1.0, 0.5], [4.0, -9.0]])
    boxes = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    scores, kept, queries = query_class_top_k(logits, boxes, k=4)
    assert queries.tolist() == [3, 0, 1, 1]
    assert torch.allclose(scores, torch.sigmoid(torch.tensor([4.0, 3.0, 2.5, 2.0])))
    assert torch.equal(kept, boxes[[3, 0, 1, 1]])
    prob = logits.sigmoid().reshape(-1)  # Deformable-DETR's PostProcess: topk over prob.view(B, -1)
    values, index = torch.topk(prob, 4)
    assert torch.equal(scores, values) and (index // 2).tolist() == queries.tolist()


def test_the_stage_takes_the_selection_of_the_spec(tiny_checkpoints) -> None:
    from masktok.schemas.spec import JobSpec, fingerprint

    built = load_model("detector", tiny_checkpoints["detector"], device="cpu")
    items = {sel: DetectStage(*built, top_k=100, selection=sel)(_items(_images()[:1]))[0]
             for sel in ("query", "query-class")}
    queries, classes = built[0].config.num_queries, built[0].config.num_labels
    assert len(items["query"]["boxes"]) == min(100, queries)
    assert len(items["query-class"]["boxes"]) == min(100, queries * classes)
    assert items["query-class"]["scores"][0] == pytest.approx(items["query"]["scores"][0])
    assert np.all(np.diff(items["query-class"]["scores"]) <= 0)
    assert not np.array_equal(items["query-class"]["scores"], items["query"]["scores"])
    default = fingerprint(JobSpec())  # the default leaves the fingerprint as before the option
    assert fingerprint(JobSpec(detect={"selection": "query"})) == default
    assert fingerprint(JobSpec(detect={"selection": "query-class"})) != default


def test_stage_returns_unique_queries_unlike_the_library_post_processing(stage) -> None:
    image = _images()[0]
    inputs = stage.processor(images=[image], input_data_format="channels_last", return_tensors="pt")
    with torch.no_grad():
        outputs = stage.model(**inputs)
    library = stage.processor.post_process_object_detection(outputs, threshold=0.0, top_k=100)[0]
    assert len(torch.unique(library["boxes"], dim=0)) < 100  # query x class pairs repeat boxes

    (item,) = stage(_items([image]))
    assert item["boxes"].shape == (100, 4) and item["scores"].shape == (100,)
    assert item["boxes"].dtype == item["scores"].dtype == np.float32
    assert len(np.unique(item["boxes"], axis=0)) == 100
    best = outputs.logits[0].sigmoid().amax(-1)
    assert np.allclose(item["scores"], torch.sort(best, descending=True).values.numpy(), atol=1e-6)
    assert (np.diff(item["scores"]) <= 0).all()


def test_boxes_are_pixel_xyxy_clipped_to_the_image() -> None:
    cxcywh = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.05, 0.9, 0.2, 0.4]])
    xyxy = to_pixel_xyxy(cxcywh, width=200, height=100)
    assert xyxy.dtype == np.float32
    assert xyxy.tolist() == [[50, 25, 150, 75], [0, 70, 30, 100]]


def test_top_k_limits_the_boxes(tiny_checkpoints) -> None:
    stage = DetectStage(*load_model("detector", tiny_checkpoints["detector"], device="cpu"), top_k=7)
    (item,) = stage(_items(_images()[:1]))
    assert item["boxes"].shape == (7, 4)


def test_mixed_sizes_in_one_batch_equal_one_at_a_time(stage) -> None:
    images = _images()
    together = stage(_items(images))
    for image, item in zip(images, together):
        (alone,) = stage(_items([image]))
        w, h = item["width"], item["height"]
        assert (item["boxes"][:, 2] <= w).all() and (item["boxes"][:, 3] <= h).all()
        assert (item["boxes"] >= 0).all()
        np.testing.assert_allclose(item["scores"], alone["scores"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(item["boxes"], alone["boxes"], rtol=0, atol=1e-3)


def test_loaded_preset_gives_identical_stage_outputs(stage) -> None:
    in_memory = DetectStage(*build_tiny_detector(seed=0), top_k=100)
    for loaded_item, memory_item in zip(stage(_items(_images())), in_memory(_items(_images()))):
        assert np.array_equal(loaded_item["boxes"], memory_item["boxes"])
        assert np.array_equal(loaded_item["scores"], memory_item["scores"])


def test_failed_items_pass_through_and_tiny_needs_a_path(stage) -> None:
    failed = {"index": 0, "image_id": "a", "path": "a", "error": {"stage": "decode", "reason": "x"}}
    assert stage([dict(failed)]) == [failed]
    with pytest.raises(ModelLoadError, match="materialise"):
        load_model("detector", "tiny")


def test_pil_and_array_inputs_agree(stage) -> None:
    """The stage feeds arrays; the processor must read them as HWC, as it reads PIL images."""
    image = _images()[1]
    from_array = stage.processor(images=[image], input_data_format="channels_last", return_tensors="pt")
    from_pil = stage.processor(images=[Image.fromarray(image)], return_tensors="pt")
    assert torch.equal(from_array["pixel_values"], from_pil["pixel_values"])
