"""The numeric precision of a model stage's forward (spec key ``precision`` of detect,
segment and invert), one context manager for all three:

- ``fp32``: full float32 (TF32 tensor-core matmuls off, whatever the process default).
- ``tf32``: float32 tensors, matmuls and convolutions on CUDA tensor cores in TF32 (10-bit
  mantissa inputs, fp32 accumulation). On a CPU it is the same as fp32.
- ``bf16``: ``torch.autocast`` to bfloat16 (matmuls, convolutions; reductions and norms
  stay fp32), on CUDA and on CPU.
- ``bf16-operator`` (invert only): fp32 throughout, except that MaskInversion's precomputed
  LeGrad operator, built in fp32, is stored in bf16 (half the bytes each step reads); see
  :func:`operator_dtype`.

Weights stay float32 in every mode. Outputs leave a stage as float32 (stages cast them).
The agreement of each mode with fp32 is measured by ``benchmarks/bench_gpu.py`` against
fp32's own noise floor (docs/scale.md "Precision"); the spec's default is tf32, the one
reduced precision within that floor for every stage (measured on a CPU, emulated).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, get_args

import torch

from ..schemas.spec import InvertPrecision, Precision

PRECISIONS: tuple[str, ...] = get_args(Precision)
#: The invert stage's precisions: the others and invert's own.
INVERT_PRECISIONS: tuple[str, ...] = get_args(InvertPrecision)
#: Precisions only the invert stage has.
INVERT_ONLY = tuple(p for p in INVERT_PRECISIONS if p not in PRECISIONS)


def operator_dtype(mode: str) -> torch.dtype:
    """The dtype MaskInversion stores its LeGrad operator in at ``mode``: bf16 where the
    steps read it in bf16 anyway (``bf16``: autocast would cast it every step) or by choice."""
    return torch.bfloat16 if mode in ("bf16", "bf16-operator") else torch.float32


@contextlib.contextmanager
def at_precision(device: torch.device, mode: str) -> Iterator[None]:
    """Run the enclosed forward at ``mode`` on ``device`` (restores the TF32 flags after)."""
    if mode not in INVERT_PRECISIONS:
        raise ValueError(f"precision {mode!r} is not one of {INVERT_PRECISIONS}")
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
