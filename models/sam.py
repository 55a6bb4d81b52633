"""SAM, the paper's segmenter: the loader for the official ``.pth`` checkpoints (architectures
from segment-anything's ``sam_model_registry``) and a tiny, seeded preset built from the same
segment-anything classes."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ..schemas.errors import ModelLoadError
from ..schemas.refusals import save_torch
from .sam_config import _TINY_IMG_SIZE, SAM_ENCODER_WIDTHS, SAM_MODEL_TYPES
from .weight_files import weights_file_problem

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
    problem = weights_file_problem(path)
    if problem:
        raise ModelLoadError(f"cannot read SAM checkpoint {path}: {problem}")
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
    save_torch(sam.state_dict(), path)
    return path
