"""Decode stage: every corpus quirk decodes to upright RGB uint8; every bad file becomes a
failure record with a reason, and the rest of the batch goes on."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masktok.tiny.corpus import draw_scene, write_quirks
from masktok.schemas.spec import DecodeSpec, FilterSpec
from masktok.stages.background import BackgroundStage
from masktok.stages.decode import DecodeStage
from masktok.stages.filter import FilterStage
from masktok.stages.masks import TileMaskStage


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """write_quirks' files plus the bad kinds it does not make."""
    root = tmp_path_factory.mktemp("corpus") / "images"
    write_quirks(random.Random(0), root / "quirks")
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("just some words, no pixels\n")
    whole = root / "quirks" / "gray.jpg"
    (bad / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    Image.new("RGB", (300, 200), "red").save(bad / "big.png")
    outside = root.parent / "outside.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, bad / "escape.jpg")
    (bad / "folder.jpg").mkdir()
    return root


def _batch(root: Path, names: list[str]) -> list[dict]:
    return [{"index": i, "image_id": n, "path": str(root / n)} for i, n in enumerate(names)]


def _decode(root: Path, names: list[str], max_pixels: int = 50_000) -> dict[str, dict]:
    batch = DecodeStage(DecodeSpec(max_pixels=max_pixels), root)(_batch(root, names))
    return {item["image_id"]: item for item in batch}


GOOD = ["gray.jpg", "cmyk.jpg", "palette.png", "rgba.png", "deep16.png", "animated.gif",
        "png_named.jpg", "rotated_exif.jpg"]


def test_every_quirk_decodes_to_rgb_uint8(corpus: Path) -> None:
    items = _decode(corpus, [f"quirks/{n}" for n in GOOD])
    for image_id, item in items.items():
        assert "error" not in item, image_id
        image = item["image"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image_id
        assert image.flags.c_contiguous and image.flags.writeable
        assert (item["height"], item["width"]) == image.shape[:2]
        assert isinstance(item["width"], int) and isinstance(item["height"], int)
    assert (items["quirks/gray.jpg"]["width"], items["quirks/gray.jpg"]["height"]) == (240, 180)


def test_exif_orientation_is_applied(corpus: Path) -> None:
    item = _decode(corpus, ["quirks/rotated_exif.jpg"])["quirks/rotated_exif.jpg"]
    assert (item["width"], item["height"]) == (180, 240)  # stored 240x180, orientation 6
    with Image.open(corpus / "quirks/rotated_exif.jpg") as im:
        stored = np.asarray(im.convert("RGB"), dtype=np.int16)
    # orientation 6 = rotate 90 degrees clockwise to display
    assert np.abs(item["image"] - np.rot90(stored, k=-1)).max() == 0


def test_sixteen_bit_maps_to_eight_bit_exactly(corpus: Path) -> None:
    item = _decode(corpus, ["quirks/deep16.png"])["quirks/deep16.png"]
    with Image.open(corpus / "quirks/deep16.png") as im:
        deep = np.asarray(im).astype(np.int64)
    assert deep.max() > 255  # really 16-bit on disk
    assert np.array_equal(item["image"][:, :, 0], deep // 257)  # written as v * 257
    assert np.array_equal(item["image"][:, :, 0], item["image"][:, :, 2])


def test_grayscale_gives_equal_channels(corpus: Path) -> None:
    image = _decode(corpus, ["quirks/gray.jpg"])["quirks/gray.jpg"]["image"]
    assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])


def test_alpha_is_composited_on_white(corpus: Path) -> None:
    image = _decode(corpus, ["quirks/rgba.png"])["quirks/rgba.png"]["image"].astype(int)
    with Image.open(corpus / "quirks/rgba.png") as im:
        rgba = np.asarray(im).astype(int)
    alpha = rgba[:, :, 3:] / 255.0
    expected = rgba[:, :, :3] * alpha + 255 * (1 - alpha)
    assert np.abs(image - expected).max() <= 1
    transparent = rgba[:, :, 3] == 0
    assert transparent.any() and (image[transparent] == 255).all()


def test_animated_gives_first_frame(corpus: Path) -> None:
    item = _decode(corpus, ["quirks/animated.gif"])["quirks/animated.gif"]
    with Image.open(corpus / "quirks/animated.gif") as im:
        assert im.n_frames == 3
        first = np.asarray(im.convert("RGB"))
    assert np.array_equal(item["image"], first)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("quirks/broken.jpg", "truncated or corrupt"),
        ("bad/truncated.jpg", "truncated or corrupt"),
        ("bad/text.jpg", "not an image"),
        ("bad/missing.jpg", "missing file"),
        ("bad/big.png", "too many pixels: 300x200 = 60,000 > decode.max_pixels 50,000"),
        ("bad/escape.jpg", "outside image root"),
        ("../outside.jpg", "outside image root"),
        ("bad/folder.jpg", "not a regular file"),
    ],
)
def test_bad_file_becomes_a_failure_record(corpus: Path, name: str, reason: str) -> None:
    items = _decode(corpus, ["quirks/gray.jpg", name, "quirks/palette.png"])
    assert items[name]["error"]["stage"] == "decode"
    assert items[name]["error"]["reason"].startswith(reason)
    assert "image" not in items[name]
    assert "image" in items["quirks/gray.jpg"] and "image" in items["quirks/palette.png"]


def test_pixel_limit_is_configurable(corpus: Path) -> None:
    assert "error" not in _decode(corpus, ["bad/big.png"], max_pixels=60_000)["bad/big.png"]
    assert "error" in _decode(corpus, ["bad/big.png"], max_pixels=59_999)["bad/big.png"]


def test_batch_order_is_kept_and_failed_items_pass_through_later_stages(corpus: Path) -> None:
    names = ["bad/missing.jpg", "quirks/gray.jpg", "quirks/broken.jpg"]
    batch = DecodeStage(DecodeSpec(), corpus)(_batch(corpus, names))
    assert [item["image_id"] for item in batch] == names
    failed = [dict(batch[0]), dict(batch[2])]
    for stage in (TileMaskStage(), BackgroundStage(), FilterStage(FilterSpec())):
        batch = stage(batch)
    assert batch[0] == failed[0] and batch[2] == failed[1]
    assert len(batch[1]["masks"]) == 55


def test_inside_symlinks_are_fine(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    draw_scene(random.Random(1), (64, 48)).save(root / "a" / "x.png")
    os.symlink(root / "a", root / "link")
    item = _decode(root, ["link/x.png"])["link/x.png"]
    assert "error" not in item and item["image"].shape == (48, 64, 3)


# ---- decode.mode = "llava": LLaVA-1.5's Image.open(p).convert("RGB") ------------------------

def _llava(root: Path, name: str) -> dict:
    return DecodeStage(DecodeSpec(max_pixels=50_000, mode="llava"), root)(_batch(root, [name]))[0]


def _pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("name", ["quirks/rotated_exif.jpg", "quirks/rgba.png", "quirks/deep16.png",
                                  "quirks/palette.png", "quirks/cmyk.jpg", "quirks/animated.gif"])
def test_llava_mode_is_pillows_convert_rgb(corpus: Path, name: str) -> None:
    item = _llava(corpus, name)
    assert np.array_equal(item["image"], _pillow(corpus / name))
    assert (item["height"], item["width"]) == item["image"].shape[:2]


def test_llava_mode_differs_from_careful_where_llava_does(corpus: Path) -> None:
    """No EXIF rotation (stored 240x180, orientation 6), the stored colour under transparent
    pixels (not white), 16-bit grey clipped by Pillow (not scaled by 1/257)."""
    rotated = _llava(corpus, "quirks/rotated_exif.jpg")
    assert (rotated["width"], rotated["height"]) == (240, 180)
    careful = _decode(corpus, ["quirks/rgba.png", "quirks/deep16.png"])
    with Image.open(corpus / "quirks/rgba.png") as im:
        rgba = np.asarray(im)
    transparent = rgba[:, :, 3] == 0
    llava_rgba = _llava(corpus, "quirks/rgba.png")["image"]
    assert np.array_equal(llava_rgba, rgba[:, :, :3])  # alpha dropped
    assert (careful["quirks/rgba.png"]["image"][transparent] == 255).all()
    assert not np.array_equal(llava_rgba[transparent], careful["quirks/rgba.png"]["image"][transparent])
    deep = _llava(corpus, "quirks/deep16.png")["image"]
    assert not np.array_equal(deep, careful["quirks/deep16.png"]["image"])


def test_llava_mode_keeps_the_failure_rules(corpus: Path) -> None:
    for name, reason in (("bad/truncated.jpg", "truncated or corrupt"), ("bad/escape.jpg", "outside image root")):
        assert reason in _llava(corpus, name)["error"]["reason"]
