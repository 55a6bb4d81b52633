"""The registry of the three models, by name, as segment-anything's ``sam_model_registry``.

Each entry knows how to load the real checkpoint format, how to build its tiny preset (the
same architecture, small and seeded) and how to save it in that format. ``"tiny"`` is one
checkpoint name among the others: :func:`materialize_tiny` builds the presets once into a
folder, in the real formats, and from then on they load through the real loaders, exactly
like a user's checkpoint. Device placement happens here, once, for every model.

    from masktok.models import load_model
    detector, processor = load_model("detector", "/weights/deformable-detr")
    sam = load_model("sam", "/weights/sam_vit_h_4b8939.pth", variant="vit_h", device="cuda")
    clip = load_model("clip", "/weights/ViT-L-14-336px.pt", variant="ViT-L-14-336-quickgelu")
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import ModelLoadError
from ..schemas.spec import TINY  # the checkpoint name of the tiny presets in a job spec
from .clip_config import PAPER_CLIP_NAME, clip_preprocess
from .sam_config import sam_input_size


def _module(name: str) -> Any:
    """models/<name>.py, imported on first use: a process loads only the model libraries it
    runs (open_clip, transformers and segment-anything each take seconds to import)."""
    return importlib.import_module(f"{__package__}.{name}")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the pipeline: its loader, its tiny preset and its checkpoint format."""

    what: str  # for messages
    load: Callable[[Path, str | None, Any], Any]  # (checkpoint, variant, torch device) -> built model
    build_tiny: Callable[[int], Any]  # seed -> the tiny preset, in memory
    save: Callable[[Any, Path], Path]  # (built model, path) -> path, in the format ``load`` reads
    tiny_file: str  # the tiny preset's file (or folder) name under a models folder
    #: (checkpoint, variant) -> what preparing the model's input on a CPU needs, read without
    #: the weights (the detector's image processor, SAM's input side, CLIP's preprocessing)
    inputs: Callable[[Path, str | None], Any]


MODEL_REGISTRY: dict[str, ModelEntry] = {
    "detector": ModelEntry(
        "Deformable-DETR (a Hugging Face folder)",
        lambda path, variant, device: _module("detector").load_detector(path, device),
        lambda seed: _module("detector").build_tiny_detector(seed),
        lambda built, path: _module("detector").save_detector(*built, path),
        "detector",
        lambda path, variant: _module("detector_config").load_processor(path),
    ),
    "sam": ModelEntry(
        "SAM (a .pth state dict; variant = model_type, e.g. vit_h or tiny)",
        lambda path, variant, device: _module("sam").load_sam(path, variant or "vit_h", device),
        lambda seed: _module("sam").build_tiny_sam(seed),
        lambda built, path: _module("sam").save_sam(built, path),
        "sam_tiny.pth",
        lambda path, variant: sam_input_size(variant or "vit_h"),
    ),
    "clip": ModelEntry(
        "open_clip CLIP (a local weights file; variant = open_clip model name)",
        lambda path, variant, device: _module("clip").load_clip(variant or PAPER_CLIP_NAME, path, device),
        lambda seed: _module("clip").build_tiny_clip(seed),
        lambda built, path: _module("clip").save_clip(built, path),
        "clip_tiny.pt",
        lambda path, variant: clip_preprocess(variant or PAPER_CLIP_NAME),
    ),
}


def pick_device(device: Any = None) -> Any:
    """``device`` if given (``"auto"`` counts as not given), else CUDA when available, else CPU."""
    import torch

    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(name: str, checkpoint: str | Path, *, variant: str | None = None, device: Any = None) -> Any:
    """The model ``name`` of :data:`MODEL_REGISTRY` loaded from ``checkpoint`` (a real file or
    folder; materialise ``"tiny"`` first), in eval mode on ``device`` (default: CUDA if any)."""
    if name not in MODEL_REGISTRY:
        raise ModelLoadError(f"unknown model {name!r}; expected one of {', '.join(MODEL_REGISTRY)}")
    if str(checkpoint) == TINY:
        raise ModelLoadError(f"the {name} checkpoint 'tiny' must be materialised first "
                             "(masktok.models.materialize_tiny) and passed as a path")
    return MODEL_REGISTRY[name].load(Path(checkpoint), variant, pick_device(device))


def load_inputs(name: str, checkpoint: str | Path, *, variant: str | None = None) -> Any:
    """What preparing model ``name``'s input on a CPU needs (:attr:`ModelEntry.inputs`), read
    from ``checkpoint`` without loading the weights: CPU actors resize images with it."""
    if name not in MODEL_REGISTRY:
        raise ModelLoadError(f"unknown model {name!r}; expected one of {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name].inputs(Path(checkpoint), variant)


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def _remove(path: Path) -> None:
    """Remove a temp checkpoint, a file (SAM, CLIP) or a folder (the detector)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def materialize_tiny(folder: Path, names: tuple[str, ...] = tuple(MODEL_REGISTRY), seed: int = 0) -> dict[str, Path]:
    """Build the tiny presets of ``names`` and save them under ``folder``; skip those present.

    Returns the checkpoint path of each, for :func:`load_model` (variants: SAM "tiny", CLIP
    ``models.clip_config.TINY_CLIP_NAME``). A preset that exists is not rebuilt, whatever ``seed`` it was
    built with. Each is written under a temporary name and renamed into place, so an
    interrupted call never leaves a half-written checkpoint that a later call would skip.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        entry = MODEL_REGISTRY[name]
        target = paths[name] = folder / entry.tiny_file
        if target.exists():
            continue
        tmp = _temp_name(target)
        _remove(tmp)
        try:
            entry.save(entry.build_tiny(seed), tmp)
            tmp.rename(target)
        except BaseException:  # a full disk: no half-written preset stays behind
            _remove(tmp)
            raise
    return paths


@functools.lru_cache(maxsize=1)
def quiet_model_libraries() -> None:
    """Progress bars and notices of the model libraries are noise in a command's output
    (and in every worker's log). transformers reads the variables when it is imported, so an
    actor that never loads it does not pay for its import here."""
    import logging

    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # imported already: its settings are read
        transformers = sys.modules["transformers"]
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights" notice
