"""FLOPs per image, device peaks and ceilings for bench_gpu.py (issue 21 item 1).

FLOPs are counted with ``torch.utils.flop_counter``'s formulas (2 per multiply-add, the
matmuls, convolutions and attention products it knows; elementwise work and the detector's
deformable sampling are not counted) on one untimed batch of the real stage call. Tensors
made under ``inference_mode`` bypass Python dispatch modes, so the count lifts the stages'
``@torch.inference_mode()`` decorators (``torch.no_grad`` instead, the same arithmetic);
``FlopCounterMode`` itself also tracks modules, which fails there, so :class:`_FlopCount`
applies its formulas without the tracking.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

#: Dense peak TFLOP/s (no structured sparsity) per precision. Source: NVIDIA's H100 and H200
#: Tensor Core GPU datasheets, SXM form factor: FP32 67, TF32 Tensor Core 989 and BF16 Tensor
#: Core 1,979 "with sparsity", i.e. 494.5 and 989.5 dense. The H200 has the H100's compute
#: (its difference is memory: 141 GB of HBM3e at 4.8 TB/s against 80 GB at 3.35 TB/s).
PEAK_TFLOPS = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
    "H200 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
}
#: The peak a precision runs at: which unit does a stage's large matmuls in that mode.
PEAK_OF_MODE = {"fp32": "fp32", "tf32": "tf32", "tf32-emulated": "tf32", "bf16": "bf16", "bf16-operator": "fp32"}


class _FlopCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(call: Callable[[], Any], stage: Any = None) -> int:
    """FLOPs of ``call()`` by FlopCounterMode's formulas (``stage``: whose inference-mode
    methods are run under no_grad for the count)."""
    with _no_inference_mode(stage), _FlopCount() as counter:
        call()
    return int(counter.total)


@contextlib.contextmanager
def _no_inference_mode(stage: Any) -> Iterator[None]:
    cls, lifted = type(stage), {}
    for name, method in vars(cls).items():
        if stage is not None and callable(method) and hasattr(method, "__wrapped__"):
            lifted[name] = method
    try:
        for name, method in lifted.items():
            setattr(cls, name, method.__wrapped__)
        with torch.no_grad() if lifted else contextlib.nullcontext():  # invert needs its autograd
            yield
    finally:
        for name, method in lifted.items():
            setattr(cls, name, method)


def ceilings(tflop_per_image: float) -> dict[str, dict[str, float]]:
    """Images/s per GPU at 100% of each device's peak, per precision."""
    return {gpu: {mode: round(peak / tflop_per_image, 2) for mode, peak in peaks.items()}
            for gpu, peaks in PEAK_TFLOPS.items()}


def device_peak(device: torch.device) -> dict[str, Any]:
    """This device's peak TFLOP/s per precision: the datasheet's for a known GPU; on a CPU or
    an unknown GPU, what a large matmul reaches here (measured, fp32 and bf16)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu, peaks in PEAK_TFLOPS.items():
            if gpu.split()[0] in name:
                return {"device": name, "source": f"datasheet ({gpu})", **peaks}
    # 1024 on a CPU: a CPU without bf16 instructions takes about 20 s per 2048 bf16 product
    n = 2048 if device.type == "cuda" else 1024
    measured = {mode: round(_matmul_tflops(device, dtype, n), 4)
                for mode, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return {"device": str(device), "source": f"measured: a {n}x{n} matmul", **measured, "tf32": measured["fp32"]}


def _matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e12


def achieved(tflop_per_image: dict[str, float], seconds_per_image: dict[str, float], peak: float) -> dict[str, dict[str, float]]:
    """Per stage: the TFLOP/s a measured seconds/image means and its fraction of ``peak``."""
    out = {}
    for stage, tflop in tflop_per_image.items():
        seconds = seconds_per_image.get(stage)
        if seconds:
            rate = tflop / seconds
            out[stage] = {"tflops": float(f"{rate:.4g}"), "fraction_of_peak": float(f"{rate / peak:.3g}")}
    return out


def invert_step_bytes(D: int, N: int, C: int, H: int, K: int, side: int, operator_bytes: int,
                      relevance_bytes: int, fused: bool = False) -> dict[str, float]:
    """Bytes one MaskInversion step moves (GB, an estimate from the shapes, one image): the
    operator read twice (t @ P and its transpose), the attention gradients written and read
    four times each way (product, clamp, sums; recomputed product, ReLU backward, product),
    the cotangents four times, the maps and dice terms about twenty float32 passes.

    ``fused``: the Triton relevance (stages/legrad_triton.py), which never writes the
    attention gradients: their part is 0. Its re-reads of the cotangents (once per tile of
    key columns) and of the values are counted as served by L2 (one mask's cotangents are
    2.4 MB at ViT-L, its tiles run side by side), so the cotangents stay at four passes."""
    attention = 0 if fused else 8 * K * H * N * N * relevance_bytes
    parts = {"operator": 2 * D * N * C * operator_bytes, "attention_gradients": attention,
             "cotangents": 4 * K * N * C * relevance_bytes, "maps": 20 * K * side * side * 4}
    return {k: float(f"{v / 1e9:.3g}") for k, v in {**parts, "total": sum(parts.values())}.items()}


#: HBM bandwidth, TB/s (NVIDIA's H100 and H200 SXM datasheets: HBM3 3.35, HBM3e 4.8).
HBM_TB_S = {"H100 SXM": 3.35, "H200 SXM": 4.8}


def invert_step_flop(D: int, N: int, C: int, K: int) -> float:
    """FLOP of one step (matmuls only): t @ P and its transpose (2 x 2KDNC), the relevance's
    product (2KN^2C) and in backward its recomputation and the product back (4KN^2C); the
    same for both kernels (the torch path recomputes in backward too)."""
    return 4.0 * K * D * N * C + 6.0 * K * N * N * C


def invert_roofline(D: int, N: int, C: int, H: int, K: int, side: int, iterations: int, mode: str,
                    operator_bytes: int, relevance_bytes: int, fused: bool,
                    gpu: str = "H100 SXM") -> dict[str, float]:
    """An estimate, never a measurement: one step's bytes and FLOP, its arithmetic intensity,
    its time at 100% of ``gpu``'s bandwidth or peak (whichever binds), and the invert stage's
    ceiling in images/s: the operator's build (D applications of the block's linearisation,
    10 D N C^2 FLOP) plus ``iterations`` steps; the CLIP forward (about 4% of the work) is
    left out."""
    gb = invert_step_bytes(D, N, C, H, K, side, operator_bytes, relevance_bytes, fused)["total"]
    flop = invert_step_flop(D, N, C, K)
    peak = PEAK_TFLOPS[gpu][PEAK_OF_MODE[mode]] * 1e12
    memory_ms, compute_ms = gb * 1e9 / (HBM_TB_S[gpu] * 1e12) * 1e3, flop / peak * 1e3
    build_ms = 10.0 * D * N * C * C / peak * 1e3
    step_ms = max(memory_ms, compute_ms)
    return {"gb_per_step": gb, "tflop_per_step": float(f"{flop / 1e12:.3g}"),
            "flop_per_byte": float(f"{flop / (gb * 1e9):.3g}"),
            "step_ms_memory": float(f"{memory_ms:.3g}"), "step_ms_compute": float(f"{compute_ms:.3g}"),
            "bound": "memory" if memory_ms >= compute_ms else "compute",
            "invert_ceiling_images_per_s": float(f"{1e3 / (build_ms + iterations * step_ms):.3g}")}
