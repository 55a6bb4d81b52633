"""Building a run's pieces from its configuration: LM, tokenizer, projector, optimiser, data.

Kept apart from the loop (trainer/train.py) so ``generate``, the benchmark and the tests
build the model exactly as training does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..schemas.errors import DataError
from .data.datasets import ConversationDataset, ItemBuilder, StreamingConversations, collate
from .data.llama_text import attach
from .data.order import example_lengths
from .data.readers import WdsImages, ZarrImages
from .data.records import Example
from .model.mask_llava import MaskLlava, Projector
from .parallel.distributed import DistEnv, ResumableSampler

STAGE_LR = {1: 1e-3, 2: 2e-5}  # paper 4.2 (LLaVA-1.5's values)


@dataclass
class TrainConfig:
    """Everything ``masktok train`` takes (see cli/train.py for the meaning of each)."""

    stage: int
    cache: Path
    data: Path
    llm: Path
    out: Path
    tokens: str | None = None
    scaling: str | None = None
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    max_length: int = 2048
    log_every: int = 1
    save_every: int | None = None
    keep_checkpoints: int | None = None
    resume: bool = False
    init_from: Path | None = None
    reader: str = "zarr"
    workers: int = 0
    seed: int = 0
    group_by_modality_length: bool | None = None  # None: stage 2 only, as LLaVA-1.5's scripts
    fraction: float = 1.0
    fraction_seed: int = 0
    precision: str = "auto"
    strategy: str = "auto"
    gradient_checkpointing: bool = False
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grouped(self) -> bool:
        """Whether batches are grouped by modality and length: as asked, else LLaVA-1.5's
        scripts' choice (stage 2's finetune.sh sets ``group_by_modality_length``, stage 1's
        pretrain.sh does not)."""
        return self.stage == 2 if self.group_by_modality_length is None else self.group_by_modality_length


def load_tokenizer(path: Path) -> Any:
    """The LM folder's tokenizer, with a pad token (unk or eos when it has none) and, for a
    Llama SentencePiece folder, LLaVA-1.5's slow text encoding attached (trainer/data/llama_text.py)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return attach(tok, Path(path))


def load_llm(path: Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Any:
    """Any Hugging Face causal LM from a local folder (never the hub), with SDPA attention;
    fp32 unless told (stage 1's frozen LM is bf16 on CUDA: trainer/parallel/sharding.py).
    The weights are read straight into ``dtype`` (transformers builds the model on the meta
    device and fills it), and onto ``device`` when it is not the CPU (accelerate's
    ``device_map``): a 7B model in bf16 never has an fp32 copy on the host."""
    from transformers import AutoModelForCausalLM

    from .model.checkpoint import has_weights

    if not (Path(path) / "config.json").is_file() or not has_weights(Path(path)):
        raise DataError(f"no Hugging Face model folder at {path} (config.json or weights missing)")
    placed = {} if torch.device(device).type == "cpu" else {"device_map": str(torch.device(device))}
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype,
                                                attn_implementation="sdpa", **placed)


def build_model(llm: Any, dims: dict[str, int]) -> MaskLlava:
    """Projector widths from the cache (C patch, D global/object) and the LM's hidden size."""
    hidden = llm.get_input_embeddings().embedding_dim
    return MaskLlava(llm, Projector(dims["C"], dims["D"], hidden))


def scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float, kind: str) -> Any:
    """LLaVA's schedule: linear warmup over ``warmup_ratio`` of the steps, then cosine to 0
    (``kind = "constant"``: warmup, then flat)."""
    warm = math.ceil(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loader(cfg: TrainConfig, env: DistEnv, examples: list[Example], images: ZarrImages,
                build: ItemBuilder, pad_id: int) -> tuple[DataLoader, ResumableSampler | None]:
    """The DataLoader of this rank: Zarr + ResumableSampler, or the streaming WebDataset.
    Both shuffle with ``cfg.seed`` per epoch (trainer/data/order.py); with
    ``cfg.grouped`` batches hold one modality and similar lengths."""
    fn = partial(collate, pad_id=pad_id)
    if cfg.reader == "wds":
        ds = StreamingConversations(examples, WdsImages(cfg.cache, env.rank, env.world, seed=cfg.seed), build,
                                    group_batch=cfg.batch_size if cfg.grouped else None)
        return DataLoader(ds, batch_size=cfg.batch_size, collate_fn=fn, num_workers=cfg.workers), None
    ds = ConversationDataset(examples, images, build)
    grouped = (*example_lengths(examples), cfg.batch_size) if cfg.grouped else None
    blocks = ds.blocks() if images.chunk_rows > 1 else None  # whole-shard chunks: read chunk by chunk
    sampler = ResumableSampler(len(ds), env.rank, env.world, seed=cfg.seed, blocks=blocks, grouped=grouped)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=fn,
                      num_workers=cfg.workers, drop_last=False), sampler


def micro_batches_per_epoch(cfg: TrainConfig, env: DistEnv, n_examples: int) -> int:
    """Micro-batches one rank sees per epoch (the streaming reader's is an estimate)."""
    per_rank = math.ceil(n_examples / env.world)
    return max(1, math.ceil(per_rank / cfg.batch_size))
