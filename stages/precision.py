"""The numeric precision of a model stage's forward (spec key ``precision`` of detect,
segment and invert), one context manager for all three:

- ``fp32``: full float32 (TF32 tensor-core matmuls off, whatever the process default).
- ``tf32``: float32 tensors, matmuls and convolutions on CUDA tensor cores in TF32 (10-bit
  mantissa inputs, fp32 accumulation). On a CPU it is the same as fp32.
- ``bf16``: ``torch.autocast`` to bfloat16 (matmuls, convolutions; reductions and norms
  stay fp32), on CUDA and on CPU.

Weights stay float32 in every mode. Outputs leave a stage as float32 (stages cast them).
The agreement of each mode with fp32 is measured by ``benchmarks/bench_gpu.py``
(docs/scale.md); the defaults are fp32 until a GPU measurement says otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def at_precision(device: torch.device, mode: str) -> Iterator[None]:
    """Run the enclosed forward at ``mode`` on ``device`` (restores the TF32 flags after)."""
    if mode not in PRECISIONS:
        raise ValueError(f"precision {mode!r} is not one of {PRECISIONS}")
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
