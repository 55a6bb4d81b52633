"""Per-rank memory of a training run, by accounting (no GPU needed): the bytes of weights,
gradients and AdamW state under ddp and fsdp, and the activations of one sequence.

The model is built on the meta device (no memory), so the counts are exact for any
config, e.g. Vicuna-7B's. The formulas, per rank, N parameters trained, W ranks:

- ddp: fp32 weights 4N + fp32 gradients 4N + AdamW's two fp32 moments 8N = 16N, and
  autocast's bf16 copies of the weights during the forward, 2N (bf16 runs).
- fsdp: 16N / W, plus what is gathered at a time (transient): the root unit (embeddings,
  LM head, norm, projectors: R parameters) in bf16 with its gradients (2R + 6R: bf16, then
  fp32 for the reduction), and two decoder layers (the running one and the prefetched
  one, 2 x 2 bytes each) with one layer's gradients (6 bytes). In fp32 (CPU) a gathered
  parameter and its gradient are 4 bytes each.
- stage 1: the frozen LM is bf16 and has neither gradients nor optimizer state: 2 bytes
  per LM parameter (replicated under ddp, split under fsdp); the projectors count 16 bytes.
- activations of one sequence of T tokens, bf16, with gradient checkpointing: each
  layer's input (L x T x H x 2), one layer recomputed in the backward (T x (12 H + 4 I) x 2:
  norms, q/k/v/o, residual, the SwiGLU's four I-wide tensors; SDPA keeps no T x T matrix),
  and the logits (T x V x 10: bf16 logits, their fp32 copy for the loss, its gradient).
  Without checkpointing, every layer keeps its set: L x T x (12 H + 4 I) x 2.

Not counted: the CUDA context and allocator slack (1-3 GB on a GPU), the data loader.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ...schemas.lm_shapes import VICUNA_7B, VICUNA_13B  # noqa: F401 (the paper's LMs, re-exported)

GiB = 2**30

# the cache's widths with CLIP ViT-L/14-336: patch tokens 1024 wide, global/object tokens 768
VIT_L_DIMS = {"C": 1024, "D": 768}


@dataclass(frozen=True)
class Counts:
    """Parameter counts of a MaskLlava: the LM, its largest decoder layer, the root unit
    (everything outside the decoder layers, projectors included) and the projectors."""

    llm: int
    projector: int
    layer: int
    root: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int


def count(model: nn.Module) -> Counts:
    """Counts of a built (or meta-device) MaskLlava."""
    from .sharding import decoder_layers

    blocks = decoder_layers(model.llm)
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    cfg = model.llm.config
    in_layers = sum(numel(b) for b in blocks)
    return Counts(llm=numel(model.llm), projector=numel(model.projector), layer=max(numel(b) for b in blocks),
                  root=numel(model) - in_layers, layers=len(blocks), hidden=cfg.hidden_size,
                  intermediate=cfg.intermediate_size, vocab=cfg.vocab_size)


def meta_model(llm_config: dict[str, Any], dims: dict[str, int]) -> nn.Module:
    """A MaskLlava of a Llama config on the meta device (shapes only, no memory)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..runtime import build_model

    with torch.device("meta"):
        return build_model(LlamaForCausalLM(LlamaConfig(**llm_config)), dims)


def state_bytes(c: Counts, stage: int, strategy: str, world: int, bf16: bool = True) -> dict[str, float]:
    """Per-rank bytes of weights, gradients, optimizer state and transient gathers."""
    w = world if strategy == "fsdp" else 1
    if stage == 1:
        trained, frozen = c.projector, c.llm
        weights = 2 * frozen / w + 4 * trained / w
    else:
        trained, frozen = c.llm + c.projector, 0
        weights = 4 * trained / w
    grads, optim = 4 * trained / w, 8 * trained / w
    if strategy == "fsdp" and world > 1:
        pb = 2 if bf16 else 4  # a gathered parameter; its unsharded gradient, + an fp32 copy to reduce
        gb = pb + (4 if bf16 else 0)
        transient = pb * c.root + gb * (c.root if stage == 2 else c.projector) + 2 * pb * c.layer \
            + (gb * c.layer if stage == 2 else 0)
    else:
        transient = 2 * trained if bf16 else 0  # autocast's bf16 weight copies
    return {"weights": weights, "grads": grads, "optimizer": optim, "transient": transient}


def activation_bytes(c: Counts, tokens: int, checkpointing: bool = True) -> float:
    """Activations of one sequence of ``tokens`` (bf16), see the module docstring."""
    one_layer = tokens * (12 * c.hidden + 4 * c.intermediate) * 2
    logits = tokens * c.vocab * 10
    if checkpointing:
        return c.layers * tokens * c.hidden * 2 + one_layer + logits
    return c.layers * one_layer + logits


@dataclass(frozen=True)
class Row:
    stage: int
    strategy: str
    world: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    transient_gib: float
    total_state_gib: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def table(c: Counts, worlds: tuple[int, ...] = (1, 2, 8)) -> list[Row]:
    """The state table for both stages, ddp and fsdp, each world size."""
    rows = []
    for stage in (1, 2):
        for strategy in ("ddp", "fsdp"):
            for world in worlds:
                b = state_bytes(c, stage, strategy, world)
                rows.append(Row(stage, strategy, world, *(round(b[k] / GiB, 2) for k in
                                                          ("weights", "grads", "optimizer", "transient")),
                                round(sum(b.values()) / GiB, 2)))
    return rows
