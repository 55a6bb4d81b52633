"""An open_clip model's config (its dimensions), read without importing open_clip.

The driver of a run needs only the embedding and vision widths of the job's CLIP to size
the record; importing open_clip for them costs seconds. Its configs are JSON files it ships
in ``open_clip/model_configs/``; a name that is not one of those files falls back to
open_clip's own registry.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

#: open_clip model name of the tiny preset (config: configs/masktok-tiny-clip.json).
TINY_CLIP_NAME = "masktok-tiny-clip"
#: The paper's model: OpenAI weights were trained with QuickGELU, so use the -quickgelu config.
PAPER_CLIP_NAME = "ViT-L-14-336-quickgelu"
TINY_CLIP_CONFIG = Path(__file__).parent / "configs" / f"{TINY_CLIP_NAME}.json"


def clip_config(name: str) -> dict[str, Any] | None:
    """The config of open_clip model ``name`` (the tiny preset included), None if unknown."""
    if name == TINY_CLIP_NAME:
        return json.loads(TINY_CLIP_CONFIG.read_text())
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model_configs" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    import open_clip

    return open_clip.get_model_config(name)
