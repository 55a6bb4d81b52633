"""Segmentation stage: SAM masks from the detector's boxes (paper: SAM ViT-H).

The model part: the real loader for the official SAM ``.pth`` checkpoints and a tiny,
seeded preset built from the same segment-anything classes. The stage part:
:class:`SegmentStage`.

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

import pickle
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ..schemas.spec import SegmentSpec
from .batch import Batch, encode_masks, exception_reason, fail, failed, pick_device
from .errors import ModelLoadError, require_materialised

#: The official checkpoints (sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth)
#: and the tiny preset. Value: the image encoder width, used to name what a checkpoint is.
SAM_ENCODER_WIDTHS: dict[str, int] = {"vit_h": 1280, "vit_l": 1024, "vit_b": 768, "tiny": 32}
SAM_MODEL_TYPES: tuple[str, ...] = tuple(SAM_ENCODER_WIDTHS)

_TINY_IMG_SIZE = 256
_TINY_PATCH = 16
_TINY_PROMPT_DIM = 32
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def _tiny_sam_architecture() -> Sam:
    """The tiny preset: same classes and wiring as segment_anything's ``_build_sam``."""
    grid = _TINY_IMG_SIZE // _TINY_PATCH
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=SAM_ENCODER_WIDTHS["tiny"],
            img_size=_TINY_IMG_SIZE,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=_TINY_PATCH,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],  # block 0 windowed, block 1 global, as in the real ones
            window_size=4,
            out_chans=_TINY_PROMPT_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=_TINY_PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(_TINY_IMG_SIZE, _TINY_IMG_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=_TINY_PROMPT_DIM, mlp_dim=64, num_heads=2
            ),
            transformer_dim=_TINY_PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_tiny_sam(seed: int = 0) -> Sam:
    """A randomly initialised tiny SAM (256 px input, 16x16 embedding grid), in eval mode.

    segment-anything zero-initialises the absolute and relative position embeddings; here
    they get small seeded random values too, so a loader that dropped them would change the
    outputs and fail the round-trip tests.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = _tiny_sam_architecture()
        with torch.no_grad():
            for name, param in sam.image_encoder.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
    return sam.eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"cannot read SAM checkpoint {path} as a torch state dict: {exc}".splitlines()[0]
        ) from exc
    if not isinstance(state, dict) or _PATCH_KEY not in state:
        raise ModelLoadError(
            f"SAM checkpoint {path} is not a SAM state dict (no {_PATCH_KEY}); expected a file "
            "saved as torch.save(sam.state_dict(), path), like the official sam_vit_*.pth"
        )
    return state


def load_sam(
    checkpoint: str | Path,
    model_type: str,
    device: str | torch.device = "cpu",
) -> Sam:
    """Load a SAM state dict (``.pth``) into the architecture named by ``model_type``.

    Accepts the official checkpoints with model_type "vit_h" (sam_vit_h_4b8939.pth, the
    paper's), "vit_l" or "vit_b", whose architecture is built by segment_anything's
    ``sam_model_registry``, and "tiny" for :func:`save_sam` files. The file is read once
    with ``weights_only=True`` and loaded strictly. A checkpoint of another size is refused
    before the (large) target model is built. Returned in eval mode on ``device``.
    """
    if model_type not in SAM_ENCODER_WIDTHS:
        raise ModelLoadError(
            f"unknown SAM model_type {model_type!r} for {checkpoint}; "
            f"expected one of {', '.join(SAM_MODEL_TYPES)}"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelLoadError(
            f"SAM checkpoint not found: {path}; expected a .pth state dict for {model_type}"
        )
    state = _read_state_dict(path)

    width = int(state[_PATCH_KEY].shape[0])
    if width != SAM_ENCODER_WIDTHS[model_type]:
        looks_like = [t for t, w in SAM_ENCODER_WIDTHS.items() if w == width]
        hint = f"it looks like {looks_like[0]!r}" if looks_like else f"encoder width {width}"
        raise ModelLoadError(
            f"SAM checkpoint {path} does not match model_type {model_type!r} ({hint})"
        )

    sam = _tiny_sam_architecture() if model_type == "tiny" else sam_model_registry[model_type]()
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(
            f"SAM checkpoint {path} does not match model_type {model_type!r}: {detail}"
        ) from exc
    return sam.to(device).eval()


def save_sam(sam: Sam, path: Path) -> Path:
    """Save like the official checkpoints: ``torch.save(sam.state_dict(), path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


# --- the stage ------------------------------------------------------------------------------


class SegmentStage:
    """Adds ``masks`` (M COCO RLE dicts, original resolution) and ``mask_iou`` (float32 [M],
    SAM's predicted IoU) for the M ``boxes`` of each item.

    ``checkpoint`` overrides ``spec.checkpoint`` (the pipeline resolves ``"tiny"`` first).
    """

    def __init__(
        self,
        spec: SegmentSpec,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
        upsample_chunk: int = 16,
    ) -> None:
        path = spec.checkpoint if checkpoint is None else checkpoint
        require_materialised(path, "segment.checkpoint")
        self.device = pick_device(device)
        self.sam = load_sam(path, spec.model_type, self.device)
        self.predictor = SamPredictor(self.sam)
        self.upsample_chunk = upsample_chunk

    @classmethod
    def from_model(
        cls, sam: Sam, device: str | torch.device | None = None, upsample_chunk: int = 16
    ) -> SegmentStage:
        """A stage around an in-memory SAM (tests: compare with the loaded checkpoint)."""
        stage = cls.__new__(cls)
        stage.device = pick_device(device)
        stage.sam = sam.to(stage.device).eval()
        stage.predictor = SamPredictor(stage.sam)
        stage.upsample_chunk = upsample_chunk
        return stage

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
