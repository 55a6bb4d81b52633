"""Tiny model presets saved in the real checkpoint formats, for tests and the demo.

Each preset is written to a temporary name and renamed into place, so an interrupted call
never leaves a half-written checkpoint that a later call would skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..stages.clip import build_tiny_clip, save_clip
from ..stages.detect import build_tiny_detector, save_detector
from ..stages.segment import build_tiny_sam, save_sam

DETECTOR_DIR = "detector"
SAM_FILE = "sam_tiny.pth"
CLIP_FILE = "clip_tiny.pt"


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def materialize_tiny_checkpoints(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Build the three tiny presets and save them under ``folder``; skip those present.

    Returns ``{"detector": folder/detector (HF folder for load_detector),
    "sam": folder/sam_tiny.pth (load_sam with model_type "tiny"),
    "clip": folder/clip_tiny.pt (load_clip with stages.clip.TINY_CLIP_NAME)}``.
    A preset that exists is not rebuilt, whatever ``seed`` it was built with.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "detector": folder / DETECTOR_DIR,
        "sam": folder / SAM_FILE,
        "clip": folder / CLIP_FILE,
    }

    if not (paths["detector"] / "config.json").is_file():
        tmp = _temp_name(paths["detector"])
        shutil.rmtree(tmp, ignore_errors=True)
        save_detector(*build_tiny_detector(seed), tmp)
        shutil.rmtree(paths["detector"], ignore_errors=True)  # an incomplete leftover
        tmp.rename(paths["detector"])

    if not paths["sam"].is_file():
        tmp = _temp_name(paths["sam"])
        save_sam(build_tiny_sam(seed), tmp)
        tmp.replace(paths["sam"])

    if not paths["clip"].is_file():
        tmp = _temp_name(paths["clip"])
        save_clip(build_tiny_clip(seed), tmp)
        tmp.replace(paths["clip"])

    return paths
