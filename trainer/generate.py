"""Answer a prompt about one cached image with a trained checkpoint (greedy decoding).

The checkpoint fixes the template (stage 1: plain, the model continues the image with a
caption and the prompt is ignored; stage 2: one v1 USER turn), the scaling mode and the
cache statistics; ``tokens`` may differ from training's (test-time pruning and pooling,
paper 3.5) and defaults to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..schemas.errors import CacheError
from ..schemas.record import Status
from . import templates
from .compose import compose
from .consolidate import load_checkpoint_model
from .readers import ZarrImages
from .scaling import CacheStats
from .refilter import require_refilterable
from .token_spec import TokenSpec, parse_spec


def open_cache(cache: Path, dims: dict[str, int], specs: list[TokenSpec]) -> ZarrImages:
    """The cache a checkpoint reads: CacheError if its widths differ from ``dims`` (those the
    projectors were built for); TokenSpecError if a spec re-filters objects it cannot."""
    images = ZarrImages(cache)
    if {k: images.dims[k] for k in ("C", "D")} != {k: dims[k] for k in ("C", "D")}:
        raise CacheError(f"the cache {cache} has widths {images.dims}, the checkpoint was trained on {dims}")
    if any(spec.iou is not None for spec in specs):
        require_refilterable(images.version, images.filter, cache)
    return images


def image_status(images: ZarrImages, image_id: str) -> str | None:
    """None when ``image_id`` has tokens in the cache, else why not (unknown, failed, pending)."""
    row = images.row_of(image_id)
    if row is None:
        return "not in the cache"
    if images.status[row] != Status.OK:
        return "failed" if images.status[row] == Status.FAILED else "not processed yet"
    return None


def prompt_ids(stage: int, tokenizer: Any, question: str, has_image: bool = True) -> list[int]:
    """The generation prompt of a checkpoint's stage: plain (the image alone; the question is
    not part of stage 1's template) or one v1 USER turn, with the image first when it has one."""
    if stage == 1:
        return templates.plain_prompt(tokenizer)
    return templates.v1_prompt(question, tokenizer, has_image=has_image)


def generate(checkpoint: Path, cache: Path, image_id: str, prompt: str, tokens: str | None = None,
             max_new_tokens: int = 64, device: str = "cpu") -> str:
    """The model's answer text (special tokens dropped, whitespace stripped)."""
    model, tokenizer, state, _ = load_checkpoint_model(checkpoint)
    model.to(device).eval()
    spec = parse_spec(tokens or state["tokens"])
    images = open_cache(cache, state["dims"], [spec])
    if (why := image_status(images, image_id)) is not None:
        raise CacheError(f"image id {image_id!r} {why} in the cache {cache}")
    return answer(model, tokenizer, state, images[images.row_of(image_id)], prompt, spec, max_new_tokens)


def answer(model: Any, tokenizer: Any, state: dict[str, Any], record: dict[str, Any], prompt: str,
           spec: TokenSpec, max_new_tokens: int = 64) -> str:
    """The greedy answer about one image's record, its visual tokens composed as training
    composed them (the checkpoint's scaling and cache statistics)."""
    stats = CacheStats.from_dict(state["stats"]) if state.get("stats") else None
    visual = compose(record, spec, state["scaling"], stats)
    out = model.generate(prompt_ids(state["stage"], tokenizer, prompt), visual, max_new_tokens, tokenizer.eos_token_id)
    return tokenizer.decode(out, skip_special_tokens=True).strip()
