"""Segmentation stage: SAM masks from the detector's boxes (paper: SAM ViT-H). The model is
built in ``models/sam.py``.

Images are encoded together: every SAM input is resized as ``SamPredictor`` does (longest
side to the encoder's ``img_size``), normalised and padded to the same square, so up to
``image_batch`` images of a batch share one image-encoder forward. Then, per image, all of
its boxes go through the prompt encoder and mask decoder as one batched prompt with
``multimask_output=False``, with that image's own input and original sizes. The
low-resolution logits are upsampled to the original resolution and thresholded on the
device ``upsample_chunk`` masks at a time, so a full-resolution float tensor exists only for
one chunk (100 masks of a 2000x1500 image would be 1.2 GB as float32); only the mask bits
go to the CPU, for RLE encoding.

Input preparation is split in two: ``model_inputs.sam_pixels`` resizes on the CPU (CPU actors run
it, ``stages/prepare.py``), the stage normalises and pads on the device. An item that
arrives with ``sam_pixels`` skips the resize; no stage needs its full-resolution
``image`` then (original sizes come from ``height``/``width``).

Items with no boxes skip the encoder. Failures are per image: an image that cannot be
preprocessed or decoded is marked failed, and when a shared encoder forward raises (e.g.
out of memory) its images are encoded again one by one, so only the culprit fails.

Caveat: a batched forward may differ from a single-image forward in the last float bits
(other matmul shapes), so an image's masks may depend on its batch, but only at pixels
whose logit is within rounding of ``mask_threshold``.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .batch import Batch, Item, encode_masks, exception_reason, fail, fail_with, failed, out_of_memory
from .model_inputs import sam_pixels
from .precision import at_precision

#: At most this many bytes of full-resolution logits and mask bits at a time: 16 masks of a
#: 12-megapixel photo would be 0.9 GB, so large images upsample fewer masks per step.
UPSAMPLE_BYTES = 256 * 2**20
#: (item, its encoder input [1, 3, S, S], its resized unpadded size (h, w)).
_Input = tuple[Item, torch.Tensor, tuple[int, int]]
#: (item, its image embedding [1, C, h, w], its resized unpadded size (h, w)).
_Encoded = tuple[Item, torch.Tensor, tuple[int, int]]


class SegmentStage:
    """Adds ``masks`` (M COCO RLE dicts, original resolution) and ``mask_iou`` (float32 [M],
    SAM's predicted IoU) for the M ``boxes`` of each item. Runs on the model's device,
    encoding up to ``image_batch`` images per image-encoder forward; the encoder and the
    mask decoder run at ``precision`` (stages/precision.py), thresholds in fp32."""

    def __init__(self, sam: Sam, upsample_chunk: int = 16, image_batch: int = 4, precision: str = "fp32") -> None:
        if upsample_chunk < 1 or image_batch < 1:
            raise ValueError("upsample_chunk and image_batch must be >= 1")
        self.sam = sam.eval()
        self.device = next(sam.parameters()).device
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.upsample_chunk = upsample_chunk
        self.image_batch = image_batch
        self.precision = precision

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> Batch:
        todo: list[Item] = []
        for item in batch:
            if failed(item):
                continue
            if "boxes" not in item:
                raise ValueError("SegmentStage needs boxes: run DetectStage first")
            if len(item["boxes"]) == 0:
                item["masks"], item["mask_iou"] = [], np.zeros(0, dtype=np.float32)
            else:
                todo.append(item)
        for start in range(0, len(todo), self.image_batch):
            for item, embedding, input_size in self._encode_group(todo[start : start + self.image_batch]):
                try:
                    item["masks"], item["mask_iou"] = self.segment(
                        embedding, input_size, (item["height"], item["width"]), item["boxes"]
                    )
                except Exception as exc:  # noqa: BLE001 - e.g. boxes the decoder cannot take
                    fail_with(item, "segment", exc)  # out of memory: raised, retried smaller
        return batch

    def preprocess(self, pixels: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resized pixels (uint8 [h, w, 3] RGB, ``model_inputs.sam_pixels``) -> encoder input [1, 3, S, S]
        on the device (normalised and padded as ``SamPredictor``) and its unpadded size (h, w)."""
        side = self.transform.target_length
        if max(pixels.shape[:2]) != side:
            raise ValueError(f"SAM input resized to {pixels.shape[:2]}, not to a longest side of {side}")
        if self.sam.image_format != "RGB":
            pixels = pixels[..., ::-1]
        x = torch.tensor(np.ascontiguousarray(pixels), device=self.device).permute(2, 0, 1).contiguous()[None].float()
        return self.sam.preprocess(x), (int(x.shape[-2]), int(x.shape[-1]))

    def _pixels(self, item: Item) -> np.ndarray:
        if "sam_pixels" in item:
            return item["sam_pixels"]
        return sam_pixels(item["image"], self.transform.target_length)

    def _encode_group(self, group: list[Item]) -> list[_Encoded]:
        """Embeddings of ``group``'s images, in one forward; items that fail are marked."""
        inputs: list[_Input] = []
        for item in group:
            try:
                inputs.append((item, *self.preprocess(self._pixels(item))))
            except Exception as exc:  # noqa: BLE001 - e.g. an image that cannot be resized
                fail_with(item, "segment", exc)
        return self._encode(inputs) if inputs else []

    def _encode(self, inputs: list[_Input]) -> list[_Encoded]:
        """One encoder forward over ``inputs``; if it raises, one forward per image."""
        try:
            with at_precision(self.device, self.precision):
                features = self.sam.image_encoder(torch.cat([x for _, x, _ in inputs])).float()
        except Exception as exc:  # noqa: BLE001 - one image the encoder cannot take
            if out_of_memory(exc):
                raise  # the caller (stages/chain.call_stage) retries in smaller batches
            if len(inputs) == 1:
                fail(inputs[0][0], "segment", exception_reason(exc))
                return []
            return [out for one in inputs for out in self._encode([one])]
        return [(item, f[None], size) for (item, _, size), f in zip(inputs, features)]

    @torch.inference_mode()
    def segment(
        self,
        embedding: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        boxes: np.ndarray,
    ) -> tuple[list[dict], np.ndarray]:
        """Masks (RLE) and predicted IoUs for ``boxes`` (float [M, 4] xyxy pixels, M >= 1) of
        one image, from its embedding [1, C, h, w] and its resized and original (H, W)."""
        sam = self.sam
        prompt = self.transform.apply_boxes_torch(
            torch.as_tensor(boxes, dtype=torch.float32, device=self.device), original_size
        )
        with at_precision(self.device, self.precision):
            sparse, dense = sam.prompt_encoder(points=None, boxes=prompt, masks=None)
            low_res, iou = sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        low_res = low_res.float()
        rles: list[dict] = []
        height, width = original_size
        chunk = max(1, min(self.upsample_chunk, UPSAMPLE_BYTES // (height * width * 5)))  # logits + bits
        for start in range(0, len(low_res), chunk):
            logits = sam.postprocess_masks(low_res[start : start + chunk], input_size, original_size)
            rles += encode_masks((logits[:, 0] > sam.mask_threshold).cpu().numpy())
        return rles, iou[:, 0].float().cpu().numpy()
