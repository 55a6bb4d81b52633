"""SAM's variants and input side, known without importing torch or segment-anything: CPU
actors resize images for SAM with them (``stages/model_inputs.py``)."""

from __future__ import annotations

from ..schemas.errors import ModelLoadError

#: The official checkpoints (sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth)
#: and the tiny preset. Value: the image encoder width, used to name what a checkpoint is.
SAM_ENCODER_WIDTHS: dict[str, int] = {"vit_h": 1280, "vit_l": 1024, "vit_b": 768, "tiny": 32}
SAM_MODEL_TYPES: tuple[str, ...] = tuple(SAM_ENCODER_WIDTHS)
#: segment-anything builds every ViT variant for a 1024 x 1024 input
_OFFICIAL_IMG_SIZE = 1024
_TINY_IMG_SIZE = 256


def sam_input_size(model_type: str) -> int:
    """The side of the square SAM's image encoder takes, for ``model_type``."""
    if model_type not in SAM_ENCODER_WIDTHS:
        raise ModelLoadError(f"unknown SAM model_type {model_type!r}; expected one of {', '.join(SAM_MODEL_TYPES)}")
    return _TINY_IMG_SIZE if model_type == "tiny" else _OFFICIAL_IMG_SIZE
