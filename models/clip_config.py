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
#: open_clip's default normalisation (``open_clip.constants.OPENAI_DATASET_MEAN`` / ``_STD``),
#: for a model whose config sets none; tests/test_prepare.py checks they are open_clip's.
OPEN_CLIP_DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPEN_CLIP_DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


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


def clip_preprocess(name: str) -> dict[str, Any]:
    """``size``, ``mean`` and ``std`` of the preprocessing open_clip gives model ``name`` loaded
    from a local weights file (as ``models.clip.preprocess_cfg`` of the loaded model), read
    from its config: open_clip's defaults, overridden by the config's ``preprocess_cfg``, the
    size of its vision tower. What CPU actors need to prepare CLIP's input."""
    config = clip_config(name)
    if config is None:
        raise ValueError(f"unknown open_clip model name {name!r}")
    own = config.get("preprocess_cfg", {})
    return {"size": config["vision_cfg"]["image_size"], "mean": tuple(own.get("mean", OPEN_CLIP_DEFAULT_MEAN)),
            "std": tuple(own.get("std", OPEN_CLIP_DEFAULT_STD))}
