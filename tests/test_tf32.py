"""TF32 emulation (stages/tf32.py), checked on single values and ops against the definition:
float32's exponent, 10 explicit mantissa bits, round to nearest with ties to even."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from masktok.stages.tf32 import EmulatedTF32, round_to_tf32

FLT_MAX = float(np.finfo(np.float32).max)


def reference(v: float) -> float:
    """The nearest TF32 value by exact arithmetic: a quantum of 2^(e-11) for a normal value
    (11 significant bits), 2^-136 for a subnormal one; Python's round is half-to-even and
    exact here (v / q is a float with at most 24 significant bits)."""
    if v == 0 or math.isinf(v) or math.isnan(v):
        return v
    _, e = math.frexp(v)  # v = m * 2^e, 0.5 <= |m| < 1
    q = 2.0 ** (e - 11) if abs(v) >= 2.0 ** -126 else 2.0 ** -136
    out = round(v / q) * q
    return math.copysign(math.inf, v) if abs(out) > FLT_MAX else out


def test_rounding_is_the_definitions_bit_for_bit():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.normal(size=4000) * 10.0 ** rng.integers(-30, 30, 4000),
        rng.uniform(-1, 1, 1000) * 2.0 ** -130,  # subnormals
        [1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), FLT_MAX, -FLT_MAX, 2.0 ** -149, 0.0, -0.0,
         np.inf, -np.inf],
    ]).astype(np.float32)
    got = round_to_tf32(torch.from_numpy(values)).numpy()
    want = np.array([reference(float(v)) for v in values], dtype=np.float32)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    assert np.isnan(round_to_tf32(torch.tensor([float("nan")])).item())
    # the ties, by hand: halfway between 1 and 1 + 2^-10 goes to 1 (even); 1 + 3 * 2^-11 to 1 + 2^-9
    assert round_to_tf32(torch.tensor([1 + 2 ** -11, 1 + 3 * 2 ** -11])).tolist() == [1.0, 1 + 2 ** -9]
    assert round_to_tf32(torch.ones(3, dtype=torch.bfloat16)).dtype == torch.bfloat16  # other dtypes untouched


def test_matmuls_and_convolutions_read_their_inputs_rounded():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=g) for shape in ((5, 16), (8, 16), (8,)))
    image, kernel = torch.randn(1, 3, 9, 9, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    r = round_to_tf32
    with EmulatedTF32():
        linear, product, conv = F.linear(x, w, b), x @ w.T, F.conv2d(image, kernel)
    assert torch.equal(linear, F.linear(r(x), r(w), r(b)))
    assert torch.equal(product, r(x) @ r(w).T)
    assert torch.equal(conv, F.conv2d(r(image), r(kernel)))
    assert not torch.equal(linear, F.linear(x, w, b)), "fp32 and TF32 inputs give different products"
    plain = F.linear(x, w, b)
    with EmulatedTF32():
        pass
    assert torch.equal(F.linear(x, w, b), plain), "the mode leaves no trace outside it"


def test_gradients_pass_the_rounding_as_identity():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, requires_grad=True)
    w = torch.randn(6, 3, generator=g)
    with EmulatedTF32():
        (x @ w).sum().backward()
    assert torch.equal(x.grad, round_to_tf32(w).sum(1).expand(4, 6))
