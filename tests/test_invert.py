"""Invert stage: LLaVA 'pad' geometry, the one vision forward, edge masks, the batch stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masktok.schemas.record import POOLED_PATCHES
from masktok.schemas.spec import InvertSpec
from masktok.stages.batch import encode_masks
from masktok.models import load_model
from masktok.models.clip import TINY_CLIP_NAME, build_tiny_clip
from masktok.stages.invert import InvertStage, invert_masks
from masktok.stages.vision import encode_vision, llava_pad_image, llava_pad_masks

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_tiny_clip(seed=0)


@pytest.mark.parametrize("height, width", [(60, 120), (150, 75), (61, 100)])
def test_pad_keeps_image_and_mask_aligned(height: int, width: int) -> None:
    """A red rectangle and its mask land on the same pixels after pad + resize."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 1] = 200  # green picture, so the grey padding and the red box are distinct
    top, left, h, w = height // 5, width // 3, height // 2, width // 4
    image[top : top + h, left : left + w] = (255, 0, 0)
    mask = np.zeros((height, width), bool)
    mask[top : top + h, left : left + w] = True

    pixels = llava_pad_image(image, 96, MEAN, STD)
    soft = llava_pad_masks([mask], 96)[0].numpy()
    rgb = (pixels * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]).numpy()
    side = max(height, width)
    scale = 96 / side
    pad_top, pad_left = (side - height) // 2 * scale, (side - width) // 2 * scale
    ys, xs = np.mgrid[:96, :96] + 0.5  # pixel centres
    inside_image = (ys > pad_top + 2) & (ys < 96 - pad_top - 2) & (xs > pad_left + 2) & (xs < 96 - pad_left - 2)
    # linear in the red/green mix: 1 on the box, 0 on the green picture (not clipped, so
    # bicubic ringing cancels out); the grey padding is left out by `inside_image`
    redness = ((rgb[0] - rgb[1] * 255 / 200) + 1) / 2 * inside_image

    expect_top = pad_top + top * scale
    expect_left = pad_left + left * scale
    for weights in (soft, redness):
        cy, cx = (weights * ys).sum() / weights.sum(), (weights * xs).sum() / weights.sum()
        assert abs(cy - (expect_top + h * scale / 2)) < 0.3
        assert abs(cx - (expect_left + w * scale / 2)) < 0.3
    core, outside = soft > 0.99, (soft < 0.01) & inside_image
    assert np.abs(redness[core] - 1).max() < 0.25 and np.abs(redness[outside]).max() < 0.25
    # the padding is the CLIP mean colour, which LLaVA writes as int(255 * mean)
    corner = rgb[:, 0, 0] if width != height else None
    np.testing.assert_allclose(corner * 255, [int(m * 255) for m in MEAN], atol=0.51)


def test_one_forward_gives_the_record_features(tiny) -> None:
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    features = encode_vision(tiny, images, keep_inputs_from=2)
    with torch.no_grad():
        torch.testing.assert_close(features.global_token, tiny.encode_image(images), atol=1e-5, rtol=1e-5)
        x = tiny.visual._embeds(images)
        blocks = tiny.visual.transformer.resblocks
        for block in blocks[:-1]:  # output of the second-to-last block
            x = block(x)
    patches = x[:, 1:]
    assert features.patch_tokens.shape == (2, POOLED_PATCHES, 64)
    grid = patches.reshape(2, 24, 24, 64)
    first_window = grid[:, :4, :4].mean(dim=(1, 2))
    last_window = grid[:, 20:, 20:].mean(dim=(1, 2))
    torch.testing.assert_close(features.patch_tokens[:, 0], first_window, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.patch_tokens[:, -1], last_window, atol=1e-5, rtol=1e-5)
    assert features.fine_patch_tokens.shape == (2, 144, 64)  # the 12x12 grid: 2x2 windows
    torch.testing.assert_close(features.fine_patch_tokens[:, 0], grid[:, :2, :2].mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.fine_patch_tokens[:, -1], grid[:, 22:, 22:].mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    norms = patches.norm(dim=-1)
    torch.testing.assert_close(features.patch_norm_mean, norms.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.patch_norm_std, norms.std(1, unbiased=False), atol=1e-5, rtol=1e-5)
    assert set(features.block_inputs) == {2}


def test_edge_masks_give_finite_tokens_and_defined_losses(tiny) -> None:
    image = torch.randn(3, 96, 96, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(4, 96, 96)
    masks[1] = 1  # full image
    masks[2, 40, 50] = 1  # one pixel
    masks[3, 10:30, 20:60] = 1  # ordinary
    tokens, losses = invert_masks(tiny, image, masks)
    assert tokens.shape == (4, 32) and losses.shape == (4,)
    assert torch.isfinite(tokens).all() and torch.isfinite(losses).all()
    assert ((losses >= 0) & (losses <= 1)).all()


def test_masks_at_another_resolution_are_compared_at_theirs(tiny) -> None:
    """As in the reference, the map is resized to the masks, not the masks to the map."""
    image = torch.randn(3, 96, 96, generator=torch.Generator().manual_seed(2))
    big = torch.zeros(2, 192, 192)
    big[0, 20:100, 40:180] = 1
    big[1, 100:, :] = 1
    small = F.interpolate(big[None], size=(96, 96), mode="area")[0]
    tokens_big, _ = invert_masks(tiny, image, big, iterations=3)
    tokens_small, _ = invert_masks(tiny, image, small, iterations=3)
    # The masks' edges fall on even pixels, so `small` is `big` exactly, one pixel per 2x2
    # block: the runs differ only by the map resampled bilinearly to 192 against kept at 96
    # (the dice sums agree up to edge effects), measured 1 - 5e-7. The bound leaves 100x
    # that for float summation order on any machine; the two objects' tokens exchanged give
    # 0.927, so a run that paired a mask with another's map fails.
    assert F.cosine_similarity(tokens_big, tokens_small).min() > 1 - 5e-5
    assert F.cosine_similarity(tokens_big, tokens_small.flip(0)).max() < 0.99


def _item(seed: int, height: int, width: int, k: int) -> dict:
    rng = np.random.RandomState(seed)
    image = (rng.rand(height, width, 3) * 255).astype(np.uint8)
    masks = np.zeros((k, height, width), bool)
    for i in range(k - 1):
        y, x = rng.randint(0, height - 10), rng.randint(0, width - 10)
        masks[i, y : y + rng.randint(5, height // 2), x : x + rng.randint(5, width // 2)] = True
    masks[-1] = ~masks[:-1].any(0)  # background last
    return {"image": image, "height": height, "width": width, "masks": encode_masks(masks)}


@pytest.fixture(scope="module")
def tiny_clip(tiny_checkpoints) -> torch.nn.Module:
    return load_model("clip", tiny_checkpoints["clip"], variant=TINY_CLIP_NAME, device="cpu")


def test_stage_fills_the_record_fields(tiny_clip) -> None:
    spec = InvertSpec(model=TINY_CLIP_NAME, iterations=3)
    stage = InvertStage(tiny_clip, spec)
    bad = _item(3, 40, 40, 2)
    bad["masks"] = encode_masks(np.zeros((1, 20, 20), bool))  # wrong size
    earlier = {"error": {"stage": "decode", "reason": "x"}}
    batch = [_item(1, 70, 110, 5), earlier, _item(2, 90, 50, 2), bad]
    assert stage(batch) is batch
    for item, k in ((batch[0], 5), (batch[2], 2)):
        assert item["object_tokens"].shape == (k, 32) and item["object_tokens"].dtype == np.float32
        assert item["inversion_loss"].shape == (k,)
        assert item["global_token"].shape == (32,)
        assert item["patch_tokens"].shape == (POOLED_PATCHES, 64)
        assert item["patch_norm_std"] > 0 and np.isfinite(item["object_tokens"]).all()
    assert earlier == {"error": {"stage": "decode", "reason": "x"}}
    assert bad["error"]["stage"] == "invert" and "object_tokens" not in bad

    grouped = InvertStage(tiny_clip, spec, images_per_group=4)
    again = grouped([_item(1, 70, 110, 5), _item(2, 90, 50, 2)])
    for a, b in zip(again, (batch[0], batch[2])):
        assert F.cosine_similarity(torch.from_numpy(a["object_tokens"]),
                                   torch.from_numpy(b["object_tokens"])).min() > 0.999


def test_the_12x12_grid_is_added_only_when_the_cache_keeps_it(tiny_clip) -> None:
    spec = InvertSpec(model=TINY_CLIP_NAME, iterations=1)
    coarse, fine = InvertStage(tiny_clip, spec)([_item(1, 70, 110, 3)]), \
        InvertStage(tiny_clip, spec, patch_grid=12)([_item(1, 70, 110, 3)])
    assert "patch_tokens_144" not in coarse[0] and fine[0]["patch_tokens_144"].shape == (144, 64)
    pooled = F.avg_pool2d(torch.from_numpy(fine[0]["patch_tokens_144"]).T.reshape(1, 64, 12, 12), 2)
    torch.testing.assert_close(pooled.flatten(2)[0].T, torch.from_numpy(fine[0]["patch_tokens"]), atol=1e-5, rtol=1e-5)


def test_bf16_tokens_stay_close_to_fp32(tiny_clip) -> None:
    item = _item(4, 64, 80, 4)
    fp32 = InvertStage(tiny_clip, InvertSpec(model=TINY_CLIP_NAME, iterations=3))
    bf16 = InvertStage(tiny_clip, InvertSpec(model=TINY_CLIP_NAME, iterations=3, precision="bf16"))
    a, b = fp32([dict(item)])[0], bf16([dict(item)])[0]
    cosine = F.cosine_similarity(torch.from_numpy(a["object_tokens"]), torch.from_numpy(b["object_tokens"]))
    assert cosine.min() > 0.98
