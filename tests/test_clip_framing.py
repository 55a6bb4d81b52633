"""invert.framing: LLaVA-1.5's "pad" (expand2square) or "crop", the centre crop of CLIP's own
image processor that LLaVA-1.5's release scripts used for ScienceQA and MM-Vet; pixels
against the transformers image processor, masks against the pixels' geometry."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

from masktok.schemas.spec import InvertSpec, JobSpec, fingerprint
from masktok.stages.model_inputs import ClipFrame, clip_pixels, crop_geometry, crop_mask_arrays, crop_pixels
from masktok.stages.prepare import PrepareMaskStage

SIZE = 336
MEAN = (0.48145466, 0.4578275, 0.40821073)


def _processor():
    """CLIP's PIL image processor (transformers 5 names it CLIPImageProcessorPil; 4's is PIL)."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, do_rescale=False,
               do_normalize=False, do_convert_rgb=False)


@pytest.mark.parametrize("height, width", [(480, 640), (500, 333), (301, 700), (200, 150)])
def test_crop_pixels_are_clips_image_processor(height: int, width: int) -> None:
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = np.asarray(_processor()(images=[image], return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0)
    ours = clip_pixels(image, ClipFrame(SIZE, MEAN, MEAN, framing="crop"))
    assert ours.shape == (SIZE, SIZE, 3) and np.array_equal(ours, np.rint(expected).astype(np.uint8))


def test_crop_masks_follow_the_pixels_and_lose_what_the_crop_cuts() -> None:
    """A 640x480 image: the crop keeps columns 80..560 of the original. A rectangle drawn in
    the image and given as a mask lands where its pixels land (edges away from the crop's)."""
    image = np.zeros((480, 640, 3), np.uint8)
    mask = np.zeros((480, 640), bool)
    mask[100:300, 200:400] = True
    image[mask] = 255
    outside = np.zeros((480, 640), bool)
    outside[:, :60] = True  # left of the crop
    soft = crop_mask_arrays([mask, outside, np.ones((480, 640), bool)], SIZE)
    pixels = crop_pixels(image, SIZE)[:, :, 0] > 127
    assert crop_geometry(640, 480, SIZE) == (448, 336, 56, 0)
    assert ((soft[0] > 0.5) == pixels).mean() > 0.995
    assert soft[1].max() == 0.0 and soft[2].min() == 1.0


def test_prepared_masks_use_the_jobs_framing() -> None:
    from pycocotools import mask as mask_utils

    m = np.zeros((480, 640), np.uint8, order="F")
    m[:, :60] = 1
    rle = mask_utils.encode(m)
    item = {"height": 480, "width": 640, "masks": [rle]}
    cfg = {"size": SIZE, "mean": MEAN, "std": MEAN}
    (cropped,) = PrepareMaskStage({**cfg, "framing": "crop"})([dict(item)])
    (padded,) = PrepareMaskStage(cfg)([dict(item)])
    assert cropped["clip_masks"][0].max() == 0.0 and padded["clip_masks"][0].max() > 0.9


def test_framing_is_in_the_fingerprint_and_pad_keeps_older_jobs() -> None:
    crop = JobSpec(invert=InvertSpec(framing="crop"))
    assert fingerprint(crop) != fingerprint(JobSpec())
    assert fingerprint(JobSpec()) == "sha256:dd0a9aa96d767105fad3adb99f19600e1ae049b32c567fe5105f8f9a591962f4"
