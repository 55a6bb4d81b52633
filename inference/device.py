"""Where and in what precision a checkpoint generates: ``--device auto`` / ``--dtype auto``.

``auto`` means CUDA and bfloat16 when this process sees a GPU, else the CPU and float32 (bf16
matmuls on a CPU are slow and fp16 ones inexact). ``ask`` and ``train`` already pick CUDA
when there is one; ``generate`` and ``answer`` do too. torch is imported on use, so the
command line can name the choices without loading it.
"""

from __future__ import annotations

from typing import Any

from ..schemas.dtypes import WEIGHT_DTYPES
from ..schemas.errors import DataError

#: What ``--dtype`` of ``answer`` and ``generate`` accepts.
DTYPE_CHOICES = ("auto", *WEIGHT_DTYPES)


def resolve_device(device: str = "auto") -> Any:
    """``auto``: ``cuda`` when a GPU is visible, else ``cpu``; anything else as torch reads it."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise DataError(f"unknown device {device!r} ({exc})") from None


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``auto``: bfloat16 on CUDA, float32 elsewhere; else the named dtype (a torch.dtype)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in WEIGHT_DTYPES:
        raise DataError(f"unknown dtype {dtype!r}: one of {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, dtype)


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``bfloat16`` (as the answers' run.json records it)."""
    return str(dtype).removeprefix("torch.")
