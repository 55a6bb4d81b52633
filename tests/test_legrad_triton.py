"""The fused Triton relevance (stages/legrad_triton.py) equals the torch path, checked on
this CPU with Triton's interpreter, and ``invert.kernel`` selects and refuses as documented.

The interpreter needs ``TRITON_INTERPRET=1`` before triton is imported, so the checks run in
a subprocess (tests/triton_checks.py), once per module: never in a pytest-xdist worker that
may import triton without it. Both subprocess tests share one xdist group so the two workers
of ``make test`` do not each pay for an interpreter at the same time.

Tolerances (largest difference over the torch path's largest magnitude):
- fp32: 1e-5. Both paths form the same fp32 products (IEEE: no TF32 on a CPU) and sum them
  in fp32 in another order. Measured when written: 2e-7 forward, 4e-7 backward; bf16 6e-4 and 7e-3.
- bf16: 2e-2. The torch path rounds every attention gradient to bf16 (8 bits) before its
  fp32 sums and its backward product; the kernel keeps them in fp32 registers. The bf16
  inputs are the same, so the difference is the torch path's rounding, 2^-9 per term.
- a whole tiny MaskInversion (2 masks, 2 steps, fp32): tokens cosine >= 0.99999, within 1e-4
  relative L2 (AdamW's per-element normalisation magnifies rounding in near-zero gradient
  entries, as tests/test_invert_parity.py explains), final dice losses within 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from masktok.schemas.errors import SpecError
from masktok.schemas.spec import InvertSpec, JobSpec, fingerprint, spec_from_dict
from masktok.stages.legrad import PositiveGradRelevance, relevance_function, triton_unavailable

CHECKS = Path(__file__).with_name("triton_checks.py")
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}
interpreter = pytest.mark.xdist_group("triton-interpreter")


def _run_checks(which: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(CHECKS), which], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@interpreter
def test_fused_kernel_matches_the_torch_path() -> None:
    results = _run_checks("kernel")
    assert len(results) == 4
    for name, errors in results.items():
        limit = TOLERANCE[name.split("-")[0]]
        assert errors["same_dtypes"] == 1.0, name
        assert errors["forward"] <= limit, (name, errors)
        assert errors["backward"] <= limit, (name, errors)


@interpreter
def test_tiny_maskinversion_is_the_same_with_the_kernel() -> None:
    errors = _run_checks("invert")
    assert errors["cosine_min"] >= 0.99999, errors
    assert errors["relative_l2_max"] <= 1e-4, errors
    assert errors["loss_diff_max"] <= 1e-4, errors


def test_auto_is_torch_on_a_cpu_and_triton_is_refused_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert relevance_function("auto", cpu) == PositiveGradRelevance.apply
    assert relevance_function("torch", cpu) == PositiveGradRelevance.apply
    assert "CUDA" in triton_unavailable(cpu)
    with pytest.raises(ValueError, match="CUDA"):
        relevance_function("triton", cpu)
    with pytest.raises(ValueError, match="kernel must be"):
        relevance_function("cuda", cpu)


def test_a_spec_asking_for_triton_on_a_cpu_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from masktok.models.clip import build_tiny_clip
    from masktok.stages.invert import InvertStage

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SpecError) as refused:
        InvertStage(build_tiny_clip(seed=0), InvertSpec(model="x", kernel="triton"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith('invert.kernel = "triton"') and "CUDA" in message


def test_the_kernel_is_a_speed_setting_outside_the_fingerprint() -> None:
    default = JobSpec()
    assert default.invert.kernel == "auto"
    for kernel in ("torch", "triton"):
        chosen = spec_from_dict({"invert": {"kernel": kernel}})
        assert fingerprint(chosen) == fingerprint(default)
    with pytest.raises(SpecError, match="invert.kernel"):
        spec_from_dict({"invert": {"kernel": "cuda"}})


def test_the_fused_row_of_the_step_traffic_at_vit_l() -> None:
    """benchmarks/gpu_flops.py: at ViT-L/14-336, K = 101, fp32 storage, the fused kernel's step
    moves the operator twice, the cotangents and the maps (issue 33: about 5 GB), no attention
    gradients; an estimate from the shapes, as docs/scale.md's table quotes it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_flops import invert_roofline, invert_step_bytes

    vit_l = dict(D=768, N=577, C=1024, H=16, K=101, side=336)
    torch_path = invert_step_bytes(**vit_l, operator_bytes=4, relevance_bytes=4)
    fused = invert_step_bytes(**vit_l, operator_bytes=4, relevance_bytes=4, fused=True)
    assert fused["attention_gradients"] == 0 and torch_path["total"] == pytest.approx(22.7)
    assert fused["total"] == pytest.approx(5.5) and fused["operator"] / fused["total"] > 0.6
    roof = {kind: invert_roofline(**vit_l, iterations=10, mode="tf32", operator_bytes=4, relevance_bytes=4,
                                   fused=kind) for kind in (False, True)}
    assert roof[True]["flop_per_byte"] == pytest.approx(70.9) and roof[True]["bound"] == "memory"
    assert roof[True]["invert_ceiling_images_per_s"] == pytest.approx(38.7)
    assert roof[False]["invert_ceiling_images_per_s"] == pytest.approx(13.0)
