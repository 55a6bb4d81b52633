"""Checks of the fused Triton relevance (stages/legrad_triton.py) under Triton's CPU
interpreter, run as a script in a process of its own: ``TRITON_INTERPRET=1`` must be set
before triton is first imported, and a pytest worker (``make test`` runs two under
pytest-xdist) may already have imported it, or go on to import it, without the flag.
``tests/test_legrad_triton.py`` runs this file and reads the JSON it prints.

    python tests/triton_checks.py kernel     # forward/backward against the torch path
    python tests/triton_checks.py invert     # a whole tiny MaskInversion, both kernels
"""

from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from masktok.stages.legrad import PositiveGradRelevance  # noqa: E402
from masktok.stages.legrad_triton import FusedPositiveGradRelevance  # noqa: E402

#: (name, B, K, N, heads, head size, dtype): N = 197 and 50 are not multiples of the 64 tile.
KERNEL_CASES = [
    ("fp32-n197-h2-d16", 2, 3, 197, 2, 16, torch.float32),
    ("fp32-n50-h3-d64", 2, 2, 50, 3, 64, torch.float32),
    ("bf16-n197-h3-d16", 2, 2, 197, 3, 16, torch.bfloat16),
    ("bf16-n50-h2-d64", 2, 3, 50, 2, 64, torch.bfloat16),
]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference over the largest magnitude of ``b`` (the torch path)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def check_kernel() -> dict[str, dict[str, float]]:
    out = {}
    for name, B, K, N, H, dh, dtype in KERNEL_CASES:
        gen = torch.Generator().manual_seed(len(out))
        # K + 1 masks, then a slice: the kernels must follow a strided (non-contiguous) view
        full = torch.randn(B, K + 1, N, H * dh, generator=gen).to(dtype)
        values = torch.randn(B, H, N, dh, generator=gen)  # fp32, cast by both paths
        grad = torch.randn(B, K, N, generator=gen)
        results = []
        for function in (PositiveGradRelevance, FusedPositiveGradRelevance):
            cotangent = full[:, 1:].detach().requires_grad_(True)
            relevance = function.apply(cotangent, values)
            relevance.backward(grad)
            results.append((relevance.detach(), cotangent.grad))
        (r_torch, g_torch), (r_fused, g_fused) = results
        out[name] = {
            "forward": _relative(r_fused, r_torch),
            "backward": _relative(g_fused, g_torch),
            "same_dtypes": float(r_fused.dtype == r_torch.dtype and g_fused.dtype == g_torch.dtype),
        }
    return out


def check_invert() -> dict[str, float]:
    from masktok.models.clip import build_tiny_clip
    from masktok.stages.maskinversion import invert_batch

    torch.manual_seed(0)
    model = build_tiny_clip(seed=0).eval()
    side = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    image = torch.randn(1, 3, side, side)
    masks = torch.zeros(2, side, side)  # two masks, two steps: the interpreter is slow
    masks[0, : side // 2] = 1
    masks[1, side // 8 : side // 3, side // 5 : side // 2] = 1
    runs = {}
    for kernel in ("torch", "triton"):
        tokens, losses, _ = invert_batch(model, image, [masks], iterations=2, kernel=kernel)
        runs[kernel] = (tokens[0], losses[0])
    (t_torch, l_torch), (t_fused, l_fused) = runs["torch"], runs["triton"]
    return {
        "cosine_min": float(F.cosine_similarity(t_fused, t_torch, dim=-1).min()),
        "relative_l2_max": float(((t_fused - t_torch).norm(dim=-1) / t_torch.norm(dim=-1)).max()),
        "loss_diff_max": float((l_fused - l_torch).abs().max()),
    }


if __name__ == "__main__":
    which = sys.argv[1]
    print(json.dumps(check_kernel() if which == "kernel" else check_invert()))
