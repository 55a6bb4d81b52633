"""A Deformable-DETR folder's layout and its image processor, without the model code: the
CPU actors that resize images for the detector need only the processor (transformers'
modeling code would cost them seconds to import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..schemas.errors import ModelLoadError

_CONFIG_FILE = "config.json"
_PROCESSOR_FILE = "preprocessor_config.json"


def check_detector_folder(folder: Path) -> None:
    """A clear ModelLoadError unless ``folder`` is a Hugging Face Deformable-DETR folder."""
    expected = (
        f"a Hugging Face Deformable-DETR folder with {_CONFIG_FILE} and {_PROCESSOR_FILE} "
        "(e.g. a download of SenseTime/deformable-detr)"
    )
    if not folder.is_dir():
        raise ModelLoadError(f"detector folder not found: {folder}; expected {expected}")
    for name in (_CONFIG_FILE, _PROCESSOR_FILE):
        if not (folder / name).is_file():
            raise ModelLoadError(f"detector folder {folder} has no {name}; expected {expected}")
    try:
        model_type = json.loads((folder / _CONFIG_FILE).read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {folder / _CONFIG_FILE}: {exc}") from exc
    if model_type != "deformable_detr":
        raise ModelLoadError(
            f"detector folder {folder} holds a {model_type!r} model; expected 'deformable_detr'"
        )


def load_processor(folder: str | Path) -> Any:
    """The image processor of a detector folder (preprocessor_config.json), without the
    weights: what a CPU actor needs to resize images for the detector."""
    from transformers import DeformableDetrImageProcessor

    folder = Path(folder)
    check_detector_folder(folder)
    try:
        return DeformableDetrImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot read the image processor of {folder}: {exc}") from exc
