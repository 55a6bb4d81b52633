"""Data-parallel plumbing: torchrun environment, process group, the resumable sampler.

Launch several workers with torchrun; each process reads RANK / WORLD_SIZE / LOCAL_RANK::

    torchrun --standalone --nproc_per_node 8 -m masktok.trainer.launch train --stage 2 ...
    # or, equivalently, with the console script:
    torchrun --standalone --nproc_per_node 8 $(which masktok) train --stage 2 ...

With WORLD_SIZE > 1 the trainer initialises a process group (nccl on CUDA, gloo on CPU),
wraps the model in DistributedDataParallel and gives each rank its share of every
epoch's permutation. ``--batch-size`` is per process: the global batch is
batch_size x grad_accum x WORLD_SIZE. Rank 0 alone writes metrics and checkpoints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistEnv:
    """Read torchrun's variables; start the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistEnv(rank, world, local, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_across(value: float, env: DistEnv) -> float:
    """The mean of a scalar over all ranks (itself when single-process)."""
    if env.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device if env.device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / env.world


def peak_memory(env: DistEnv) -> dict[str, list[float] | None]:
    """Each rank's peak resident memory (MB, the process's ru_maxrss) and, on CUDA, its peak
    allocated GPU memory (MB); a collective when WORLD_SIZE > 1."""
    import resource

    mine = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            torch.cuda.max_memory_allocated() / 2**20 if env.device.startswith("cuda") else -1.0]
    every = [mine]
    if env.world > 1:
        every = [None] * env.world
        dist.all_gather_object(every, mine)
    return {"rss_mb": [round(r[0], 1) for r in every],
            "gpu_mb": [round(r[1], 1) for r in every] if env.device.startswith("cuda") else None}


class ResumableSampler(Sampler[int]):
    """torch's DistributedSampler semantics (seeded per-epoch permutation, padded to a
    multiple of the world size, strided by rank) plus what it lacks:

    - ``start``: skip the first ``start`` indices of this rank's epoch, so a resumed run
      continues with the very batches an uninterrupted run would have seen next;
    - ``grouped`` (optional: each example's length, whether it has an image, the per-rank
      batch size): LLaVA-1.5's ``group_by_modality_length`` order (trainer/data/order.py);
    - ``blocks`` (optional, one block id per item): shuffle the blocks, then the items
      within each block, and give each rank a contiguous run of the order, so a rank reads
      a store whose chunks are whole shards chunk by chunk (trainer/data/readers.py). A store
      with one-row chunks has no such need: leave it out for a global shuffle.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True,
                 blocks: Sequence[int] | None = None,
                 grouped: tuple[np.ndarray, np.ndarray, int] | None = None) -> None:
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.blocks = np.asarray(blocks) if blocks is not None and grouped is None else None
        self.grouped = grouped
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> np.ndarray:
        """This epoch's permutation of all items (before the rank split)."""
        if not self.shuffle:
            return np.arange(self.n)
        from ..data.order import epoch_rng

        rng = epoch_rng(self.seed, self.epoch)
        if self.grouped is not None:
            from ..data.order import modality_length_grouped

            lengths, has_image, batch = self.grouped
            return modality_length_grouped(np.asarray(lengths), np.asarray(has_image), batch, self.world, rng)
        if self.blocks is None:
            return rng.permutation(self.n)
        ids, inverse = np.unique(self.blocks, return_inverse=True)
        block_pos = rng.permutation(len(ids))  # where each block goes in the epoch
        within = rng.random(self.n)  # order inside a block
        return np.lexsort((within, block_pos[inverse]))

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        total = self.per_rank * self.world
        if total > len(order) and len(order):
            order = np.concatenate([order, order[: total - len(order)]])
        mine = order[self.rank:total:self.world] if self.blocks is None else \
            order.reshape(self.world, -1)[self.rank] if len(order) else order
        return iter(mine[self.start:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start
