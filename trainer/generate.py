"""Answer a prompt about one cached image with a trained checkpoint (greedy decoding).

The checkpoint fixes the template (stage 1: plain, the model continues the image with a
caption and the prompt is ignored; stage 2: one v1 USER turn), the scaling mode and the
cache statistics; ``tokens`` may differ from training's (test-time pruning and pooling,
paper 3.5) and defaults to it.
"""

from __future__ import annotations

from pathlib import Path

from ..schemas.errors import CacheError
from ..schemas.record import Status
from . import templates
from .compose import compose
from .consolidate import load_checkpoint_model
from .readers import ZarrImages
from .scaling import CacheStats
from .token_spec import parse_spec


def load_image(cache: Path, image_id: str, dims: dict[str, int] | None = None) -> dict:
    """The cache record of ``image_id``; CacheError if unknown, not ok, or the cache's
    widths differ from ``dims`` (those the checkpoint's projectors were built for)."""
    images = ZarrImages(cache)
    if dims is not None and {k: images.dims[k] for k in ("C", "D")} != {k: dims[k] for k in ("C", "D")}:
        raise CacheError(f"the cache {cache} has widths {images.dims}, the checkpoint was trained on {dims}")
    try:
        row = images.image_ids.index(image_id)
    except ValueError:
        raise CacheError(f"image id {image_id!r} is not in the cache {cache}") from None
    if images.status[row] != Status.OK:
        what = "failed" if images.status[row] == Status.FAILED else "not processed yet"
        raise CacheError(f"image id {image_id!r} {what} in the cache {cache} (status {int(images.status[row])})")
    return images[row]


def generate(checkpoint: Path, cache: Path, image_id: str, prompt: str, tokens: str | None = None,
             max_new_tokens: int = 64, device: str = "cpu") -> str:
    """The model's answer text (special tokens dropped, whitespace stripped)."""
    model, tokenizer, state, _ = load_checkpoint_model(checkpoint)
    model.to(device).eval()
    spec = parse_spec(tokens or state["tokens"])
    stats = CacheStats.from_dict(state["stats"]) if state.get("stats") else None
    visual = compose(load_image(cache, image_id, state["dims"]), spec, state["scaling"], stats)
    if state["stage"] == 1:
        ids = templates.plain_prompt(tokenizer)
    else:
        ids = templates.v1_prompt(prompt, tokenizer, has_image=True)
    out = model.generate(ids, visual, max_new_tokens, tokenizer.eos_token_id)
    return tokenizer.decode(out, skip_special_tokens=True).strip()
