"""How the model is spread over the ranks: ``ddp`` (every rank holds it all) or ``fsdp``
(torch's FSDP2, ``fully_shard``: parameters, gradients and optimizer state split over the
ranks). The memory each takes is in benchmarks/bench_memory.py and docs/trainer.md.

fsdp: one FSDP unit per decoder layer (the LM's own ``_no_split_modules`` classes, e.g.
``LlamaDecoderLayer``), then the root unit: embeddings, final norm, LM head and the
projectors. A unit's parameters are gathered just before its forward (and again for the
backward) and freed after; gradients are reduce-scattered so each rank keeps its shard.
On CUDA with bf16, ``MixedPrecisionPolicy`` computes in bf16 and reduces gradients in fp32
while the sharded master weights and AdamW's state stay fp32. The optimizer must be built
after wrapping: its parameters are then the DTensor shards.

Stage 1 freezes the LM (no gradients, no optimizer state) and holds it in bf16 on CUDA
(fp32 on CPU); only the projectors train.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from ...schemas.errors import TrainError
from .distributed import DistEnv

STRATEGIES = ("auto", "ddp", "fsdp")


def resolve_strategy(asked: str, env: DistEnv) -> str:
    """``auto``: fsdp on CUDA with several processes, ddp otherwise. One process has nothing
    to shard or reduce: it runs unwrapped, reported as ddp whatever was asked."""
    if asked not in STRATEGIES:
        raise TrainError(f"unknown strategy {asked!r}: use one of {', '.join(STRATEGIES)}")
    if env.world == 1:
        return "ddp"
    if asked != "auto":
        return asked
    return "fsdp" if env.device.startswith("cuda") else "ddp"


def use_bf16(device: str, precision: str) -> bool:
    """bf16 compute: asked for, or ``auto`` on a CUDA device that supports it."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.startswith("cuda") and torch.cuda.is_bf16_supported()


def frozen_llm_dtype(device: str, precision: str) -> torch.dtype:
    """The storage dtype of stage 1's frozen LM: bf16 where the run computes in bf16."""
    return torch.bfloat16 if use_bf16(device, precision) else torch.float32


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LM's repeated blocks, found by the class names it declares unsplittable."""
    names = set(getattr(llm, "_no_split_modules", None) or ())
    layers = [m for m in llm.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainError(f"{type(llm).__name__} declares no decoder layer class (_no_split_modules): "
                         "it cannot be sharded per layer; use --strategy ddp")
    return layers


def wrap(model: nn.Module, strategy: str, env: DistEnv, precision: str) -> nn.Module:
    """Shard ``model`` in place (fsdp) or wrap it (ddp; nothing with one process).

    Returns the module to call in the training loop. ``model`` itself stays the one to
    build the optimizer on and to hand to the state-dict functions (trainer/model/checkpoint.py).
    """
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kind = "cuda" if env.device.startswith("cuda") else "cpu"
        mesh = init_device_mesh(kind, (env.world,))
        bf16 = use_bf16(env.device, precision)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                      reduce_dtype=torch.float32 if bf16 else None)
        for layer in decoder_layers(model.llm):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    model.to(env.device)
    if env.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # every parameter joins every step (MaskLlava adds the projector's idle() term), so no
    # find_unused_parameters; gradients live in DDP's buckets instead of beside them (4 B/param)
    return DDP(model, device_ids=[env.local_rank] if env.device.startswith("cuda") else None,
               gradient_as_bucket_view=True)


def gradient_sync(run_model: nn.Module, strategy: str, env: DistEnv, last_micro_batch: bool) -> ContextManager[Any]:
    """Reduce gradients on the last micro-batch of a step only (gradient accumulation)."""
    if strategy == "fsdp":  # (fsdp implies several processes: resolve_strategy)
        run_model.set_requires_gradient_sync(last_micro_batch)
        return contextlib.nullcontext()
    if env.world == 1 or last_micro_batch:
        return contextlib.nullcontext()
    return run_model.no_sync()


def autocast(env: DistEnv, strategy: str, precision: str) -> ContextManager[Any]:
    """ddp: bf16 autocast when the run computes in bf16. fsdp: the mixed-precision policy
    casts the parameters instead, so autocast stays off."""
    kind = "cuda" if env.device.startswith("cuda") else "cpu"
    on = use_bf16(env.device, precision) and strategy != "fsdp"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=on)
