"""``masktok generate``: a trained checkpoint's greedy answer about one cached image.

``tokens`` may differ from training's (test-time pruning and pooling, paper 3.5) and
defaults to it; the template, scaling and statistics are the checkpoint's (generation.py).
"""

from __future__ import annotations

from pathlib import Path

from ..schemas.errors import CacheError
from .cache import image_status, open_cache
from .generation import generate_answer, load_generation_model


def generate(checkpoint: Path, cache: Path, image_id: str, prompt: str, tokens: str | None = None,
             max_new_tokens: int = 64, device: str = "auto", dtype: str = "auto") -> str:
    """The model's answer text (special tokens dropped, whitespace stripped); ``device`` and
    ``dtype`` as inference/device.py resolves them (auto: CUDA + bf16 with a GPU, else CPU + fp32)."""
    gm = load_generation_model(checkpoint, device, dtype)
    spec = gm.token_spec(tokens)
    images = open_cache(cache, gm.dims, [spec])
    if (why := image_status(images, image_id)) is not None:
        raise CacheError(f"image id {image_id!r} {why} in the cache {cache}")
    return generate_answer(gm, images[images.row_of(image_id)], prompt, spec, max_new_tokens)
