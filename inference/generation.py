"""The one generation path of masktok: a checkpoint loaded for generation, its prompt ids,
and :func:`generate_answers`, which ``masktok generate``, ``masktok answer`` and ``masktok
ask`` all call.

The checkpoint fixes the template (stage 1: plain, the model continues the image with a
caption and the question is ignored; stage 2: one v1 USER turn), the scaling mode and the
cache statistics. Visual tokens are composed from a record (a cache row's, or one computed
in process by ``ask``) as training composed them; ``spec`` may differ from training's
(test-time pruning and pooling, paper 3.5). Prompts are decoded together, left-padded
(trainer/model/mask_llava.py ``generate_batch``): a greedy answer does not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..trainer.data import templates
from ..trainer.visual.compose import compose
from ..trainer.model.consolidate import load_checkpoint_model
from ..trainer.visual.scaling import CacheStats
from ..trainer.visual.token_spec import TokenSpec, parse_spec
from .device import resolve_device, resolve_dtype


def prompt_ids(stage: int, tokenizer: Any, question: str, has_image: bool = True) -> list[int]:
    """The generation prompt of a checkpoint's stage: plain (the image alone; the question is
    not part of stage 1's template) or one v1 USER turn, with the image first when it has one."""
    if stage == 1:
        return templates.plain_prompt(tokenizer)
    return templates.v1_prompt(question, tokenizer, has_image=has_image)


@dataclass(frozen=True)
class Prompter:
    """A checkpoint's prompt side without its model (a driver plans batches by prompt length
    before any replica has loaded weights): the tokenizer, the stage and the resolved folder."""

    tokenizer: Any
    state: dict[str, Any]
    path: Path
    state_json: str  # the checkpoint's state.json as written (part of an answer run's settings)

    @property
    def stage(self) -> int:
        return int(self.state["stage"])

    @classmethod
    def of(cls, checkpoint: Path) -> "Prompter":
        from ..trainer.model import checkpoint as ckpt
        from ..trainer.runtime import load_tokenizer

        path = ckpt.resolve(checkpoint)
        state = ckpt.read_state(path)
        return cls(load_tokenizer(ckpt.llm_dir(path, state)), state, path,
                   (path / "state.json").read_text(encoding="utf-8"))

    def length(self, question: str, has_image: bool = True) -> int:
        """The number of prompt ids of ``question`` (the image sentinel counted once)."""
        return len(prompt_ids(self.stage, self.tokenizer, question, has_image))


@dataclass
class GenerationModel:
    """A checkpoint ready to generate: its model (in eval mode, on its device), tokenizer and
    the training state that fixes the template, the scaling and the token widths."""

    model: Any
    tokenizer: Any
    state: dict[str, Any]
    path: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    stats: CacheStats | None = field(init=False)

    def __post_init__(self) -> None:
        self.stats = CacheStats.from_dict(self.state["stats"]) if self.state.get("stats") else None

    @property
    def stage(self) -> int:
        return int(self.state["stage"])

    @property
    def dims(self) -> dict[str, int]:
        """The token widths the projectors were built for (C, D, ...)."""
        return self.state["dims"]

    def token_spec(self, tokens: str | None = None) -> TokenSpec:
        """``tokens`` parsed, or the checkpoint's own spec when None."""
        return parse_spec(tokens or self.state["tokens"])


def load_generation_model(checkpoint: Path, device: str = "auto", dtype: str = "auto") -> GenerationModel:
    """Any checkpoint or run folder (its latest), loaded straight onto ``device`` in ``dtype``
    (``auto``: inference/device.py), in eval mode."""
    where = resolve_device(device)
    precision = resolve_dtype(dtype, where)
    model, tokenizer, state, path = load_checkpoint_model(checkpoint, where, precision)
    model.eval()
    return GenerationModel(model, tokenizer, state, path, where, precision)


@dataclass(frozen=True)
class Request:
    """One prompt: the record of its image (None: a text-only question) and the question."""

    record: dict[str, Any] | None
    question: str


@dataclass
class Answers:
    """Per request, in order: the answer text, how many visual tokens the model saw, and the
    smallest gap between its two best logits (how near to a tie greedy decoding came;
    sampling: nan)."""

    texts: list[str]
    visual_tokens: list[int]
    margins: list[float]
    prompt_tokens: list[int] = field(default_factory=list)  # what the LM prefilled: text and visual
    steps: int = 0  # decoding steps the batch ran (its longest answer)
    answer_steps: int = 0  # the steps each answer needed (its tokens and its eos), summed: steps x B - this is waste


def generate_answers(gm: GenerationModel, requests: Sequence[Request], spec: TokenSpec, max_new_tokens: int,
                     temperature: float = 0.0) -> Answers:
    """Answer ``requests`` in one batch: visual tokens composed from each record at ``spec``
    with the checkpoint's scaling and statistics, the stage's prompt ids, decoding together,
    answers decoded without special tokens and stripped. ``temperature`` 0: greedy."""
    visual = [None if r.record is None else compose(r.record, spec, gm.state["scaling"], gm.stats) for r in requests]
    prompts = [prompt_ids(gm.stage, gm.tokenizer, r.question, has_image=r.record is not None) for r in requests]
    out = gm.model.generate_batch(prompts, visual, max_new_tokens, gm.tokenizer.eos_token_id,
                                  gm.tokenizer.pad_token_id, temperature)
    seen = [0 if v is None else len(v) for v in visual]
    prefilled = [sum(t != templates.IMAGE_TOKEN_INDEX for t in p) + n for p, n in zip(prompts, seen)]
    return Answers([gm.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.tokens],
                   seen, list(out.margins), prefilled, out.steps,
                   sum(min(len(ids) + 1, out.steps) for ids in out.tokens))


def generate_answer(gm: GenerationModel, record: dict[str, Any] | None, question: str, spec: TokenSpec,
                    max_new_tokens: int = 64) -> str:
    """The greedy answer to one question (a batch of one of :func:`generate_answers`)."""
    return generate_answers(gm, [Request(record, question)], spec, max_new_tokens).texts[0]
