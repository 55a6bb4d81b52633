"""Segmentation stage: SAM masks from the detector's boxes (paper: SAM ViT-H). The model is
built in ``models/sam.py``.

Per image: one image embedding (``SamPredictor.set_image``), then all of its boxes go
through the prompt encoder and mask decoder as one batched prompt with
``multimask_output=False``. The low-resolution logits are upsampled to the original
resolution, thresholded and RLE-encoded ``upsample_chunk`` masks at a time, so a full
resolution float tensor exists only for one chunk (100 masks of a 2000x1500 image would
be 1.2 GB as float32). Images go through the encoder one at a time: SAM pads every image
to a square anyway, and ViT-H on 1024x1024 already fills a GPU, so batching images would
buy little and would make an image's masks depend on its batch in the last bits.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from .batch import Batch, encode_masks, exception_reason, fail, failed



class SegmentStage:
    """Adds ``masks`` (M COCO RLE dicts, original resolution) and ``mask_iou`` (float32 [M],
    SAM's predicted IoU) for the M ``boxes`` of each item. Runs on the model's device; the
    thin ``SamPredictor`` of segment-anything is given the built model."""

    def __init__(self, sam: Sam, upsample_chunk: int = 16) -> None:
        self.sam = sam.eval()
        self.device = next(sam.parameters()).device
        self.predictor = SamPredictor(self.sam)
        self.upsample_chunk = upsample_chunk

    def __call__(self, batch: Batch) -> Batch:
        for item in batch:
            if failed(item):
                continue
            if "boxes" not in item:
                raise ValueError("SegmentStage needs boxes: run DetectStage first")
            try:
                item["masks"], item["mask_iou"] = self.segment(item["image"], item["boxes"])
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory on one huge image
                fail(item, "segment", exception_reason(exc))
        return batch

    @torch.inference_mode()
    def segment(self, image: np.ndarray, boxes: np.ndarray) -> tuple[list[dict], np.ndarray]:
        """Masks (RLE) and predicted IoUs for ``boxes`` (float [M, 4] xyxy pixels) on ``image``."""
        if len(boxes) == 0:
            return [], np.zeros(0, dtype=np.float32)
        predictor, sam = self.predictor, self.sam
        predictor.set_image(image)
        prompt = predictor.transform.apply_boxes_torch(
            torch.as_tensor(boxes, dtype=torch.float32, device=self.device), predictor.original_size
        )
        sparse, dense = sam.prompt_encoder(points=None, boxes=prompt, masks=None)
        low_res, iou = sam.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        rles: list[dict] = []
        for start in range(0, len(low_res), self.upsample_chunk):
            logits = sam.postprocess_masks(
                low_res[start : start + self.upsample_chunk], predictor.input_size, predictor.original_size
            )
            rles += encode_masks((logits[:, 0] > sam.mask_threshold).cpu().numpy())
        predictor.reset_image()
        return rles, iou[:, 0].float().cpu().numpy()
