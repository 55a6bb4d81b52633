"""CPU halves of the model stages (stages/prepare.py): what CPU actors prepare is exactly what
the model stages would prepare themselves, the resize halves equal the libraries' own
preprocessing, a failure to prepare is the model stage's failure, and the configs read
without weights equal those of the loaded models."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from masktok.models import load_inputs, load_model
from masktok.models.clip import preprocess_cfg
from masktok.models.clip_config import TINY_CLIP_NAME
from masktok.tiny.corpus import write_quirks
from masktok.stages.topology import front_stages, run_stages
from masktok.schemas.spec import InvertSpec, JobSpec
from masktok.models.clip_config import clip_preprocess
from masktok.stages.detect import DetectStage
from masktok.stages.invert import InvertStage
from masktok.stages.model_inputs import ClipFrame, detector_pixels, sam_pixels
from masktok.stages.prepare import PrepareImageStage, PrepareMaskStage
from masktok.stages.segment import SegmentStage

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = JobSpec.model_validate({"segment": {"model_type": "tiny"}, "detect": {"top_k": 12},
                               "invert": {"model": TINY_CLIP_NAME, "iterations": 2}})
ARRAYS = ("image", "detector_pixels", "sam_pixels", "clip_pixels", "clip_masks")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("prepare") / "images"
    ids = write_quirks(random.Random(1), root / "quirks")
    return root, [{"index": i, "image_id": x, "path": str(root / x)} for i, x in enumerate(ids)]


@pytest.fixture(scope="module")
def inputs(tiny_checkpoints) -> dict:
    return {"detector": load_inputs("detector", tiny_checkpoints["detector"]),
            "sam": load_inputs("sam", tiny_checkpoints["sam"], variant="tiny"),
            "clip": load_inputs("clip", tiny_checkpoints["clip"], variant=TINY_CLIP_NAME)}


def test_inputs_read_without_weights_equal_the_loaded_models(tiny_checkpoints, inputs) -> None:
    detector, processor = load_model("detector", tiny_checkpoints["detector"], device="cpu")
    sam = load_model("sam", tiny_checkpoints["sam"], variant="tiny", device="cpu")
    clip = load_model("clip", tiny_checkpoints["clip"], variant=TINY_CLIP_NAME, device="cpu")
    assert inputs["detector"].to_dict() == processor.to_dict()
    assert inputs["sam"] == sam.image_encoder.img_size == 256
    assert load_inputs("sam", tiny_checkpoints["sam"], variant="vit_h") == 1024
    assert ClipFrame.from_cfg(inputs["clip"]) == ClipFrame.from_cfg(preprocess_cfg(clip))
    assert ClipFrame.from_cfg(load_inputs("clip", tiny_checkpoints["clip"])).size == 336  # the paper's CLIP


def test_clip_settings_read_from_configs_are_open_clips_for_every_model() -> None:
    """open_clip's own merge (its defaults, then the config's preprocess_cfg) as the oracle,
    over every model it knows: the settings CPU actors use without importing it."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    names = open_clip.list_models()
    assert TINY_CLIP_NAME in names and len(names) > 50
    for name in names:
        config = open_clip.get_model_config(name)
        expected = merge_preprocess_dict(asdict(PreprocessCfg()), config.get("preprocess_cfg", {}))
        ours = clip_preprocess(name)
        assert (ours["mean"], ours["std"]) == (tuple(expected["mean"]), tuple(expected["std"])), name
        assert ours["size"] == config["vision_cfg"]["image_size"], name


@pytest.mark.parametrize("height, width", [(240, 320), (320, 240), (37, 601), (1000, 999), (3, 2)])
def test_sam_resize_is_sam_predictors(height, width) -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    image = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for side in (1024, 256):
        np.testing.assert_array_equal(sam_pixels(image, side), ResizeLongestSide(side).apply_image(image))


@pytest.mark.parametrize("height, width", [(240, 320), (320, 240), (37, 601), (700, 500)])
def test_detector_halves_equal_the_image_processor(tiny_checkpoints, height, width) -> None:
    detector, processor = load_model("detector", tiny_checkpoints["detector"], device="cpu")
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = processor(images=[image], input_data_format="channels_last", return_tensors="pt")["pixel_values"]
    ours = DetectStage(detector, processor).normalise([detector_pixels(image, processor)])
    assert ours.shape == expected.shape
    # same operations as the processor's numpy rescale and normalise; torch may round the
    # division differently in the last bit (values are within +-3, so 1e-6 is a few ulps)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def _run(stages: list, batch: list[dict]) -> list[dict]:
    return run_stages(stages, [dict(item) for item in batch])


def test_prepared_items_give_the_same_records_without_their_image(corpus, tiny_checkpoints, inputs) -> None:
    """What the Ray graph does (prepare in CPU actors, the image dropped, the masks brought
    into the CLIP frame by the filter group) gives bit for bit what the model stages give
    when they prepare their inputs themselves from the image."""
    root, batch = corpus
    decode, prepare, detect, segment, background, filter_, prepare_masks = front_stages(
        SPEC, root, tiny_checkpoints, "cpu")
    assert isinstance(prepare, PrepareImageStage) and isinstance(prepare_masks, PrepareMaskStage)
    invert = InvertStage(load_model("clip", tiny_checkpoints["clip"], variant=TINY_CLIP_NAME, device="cpu"),
                         SPEC.invert)
    decoded = _run([decode], batch)
    plain = _run([detect, segment, background, filter_, invert], decoded)
    prepared = _run([prepare], decoded)
    for item in prepared:
        item.pop("image", None)  # as the Ray graph drops it: no later stage may need it
    prepared = _run([detect, segment, background, filter_, prepare_masks, invert], prepared)
    ok = [i for i, item in enumerate(plain) if "error" not in item]
    assert len(ok) >= 4 and [i for i, item in enumerate(prepared) if "error" not in item] == ok
    for i in ok:
        a, b = plain[i], prepared[i]
        assert b["clip_masks"].shape == (len(b["masks"]), 96, 96) and b["clip_pixels"].shape == (96, 96, 3)
        assert [m["counts"] for m in a["masks"]] == [m["counts"] for m in b["masks"]]
        for key in ("boxes", "scores", "mask_iou", "keep_rank", "object_tokens", "inversion_loss",
                    "global_token", "patch_tokens"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_failure_to_prepare_is_the_model_stage_failure(tiny_checkpoints, inputs) -> None:
    thin = {"index": 0, "image_id": "thin.png", "path": "thin.png", "height": 1, "width": 900,
            "image": np.zeros((1, 900, 3), np.uint8)}
    detector, processor = load_model("detector", tiny_checkpoints["detector"], device="cpu")
    (alone,) = DetectStage(detector, processor)([dict(thin)])
    (prepared,) = PrepareImageStage(inputs["clip"], inputs["detector"], inputs["sam"])([dict(thin)])
    assert alone["error"]["stage"] == prepared["error"]["stage"] == "detect"
    assert prepared["error"]["reason"].startswith("preprocessing failed:")
    assert "sam_pixels" not in prepared and "clip_pixels" not in prepared  # first failure wins


def test_model_stages_refuse_inputs_prepared_for_another_model(tiny_checkpoints, inputs) -> None:
    sam = load_model("sam", tiny_checkpoints["sam"], variant="tiny", device="cpu")
    image = np.zeros((50, 80, 3), np.uint8)
    for_vit_h = PrepareImageStage(inputs["clip"], sam_side=1024)([{"image": image, "height": 50, "width": 80}])[0]
    item = {**for_vit_h, "boxes": np.array([[0, 0, 10, 10]], np.float32)}
    (out,) = SegmentStage(sam)([item])
    assert out["error"]["stage"] == "segment" and "longest side of 256" in out["error"]["reason"]
    clip = load_model("clip", tiny_checkpoints["clip"], variant=TINY_CLIP_NAME, device="cpu")
    wrong = {"image": image, "height": 50, "width": 80, "masks": [], "clip_pixels": np.zeros((336, 336, 3), np.uint8)}
    (out,) = InvertStage(clip, InvertSpec(model=TINY_CLIP_NAME, iterations=1))([wrong])
    assert out["error"]["stage"] == "invert" and "(96, 96, 3)" in out["error"]["reason"]
