"""The batched MaskInversion against a plain per-mask oracle written as the reference does it.

The oracle repeats the image once per mask, recomputes the LeGrad blocks with the softmax
attention A as an explicit autograd leaf, takes d(t . f)/dA with ``create_graph=True`` and
back-propagates the dice loss through that gradient (double backward), stepping AdamW.
It is slow and memory hungry by design, and shares no code with ``masktok.stages.legrad``.
"""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from masktok.stages import maskinversion
from masktok.models.clip import TINY_CLIP_NAME, build_tiny_clip, register_tiny_clip_config
from masktok.stages.invert import invert_batch, legrad_maps


def random_masks(k: int, size: int, seed: int) -> torch.Tensor:
    """k masks: rectangles and ellipses of random place and size, then the edge cases."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for i in range(k):
        cy, cx = rng.uniform(0, size, 2)
        hy, hx = rng.uniform(3, size / 2, 2)
        if i % 2:
            m = (np.abs(yy - cy) < hy) & (np.abs(xx - cx) < hx)
        else:
            m = ((yy - cy) / hy) ** 2 + ((xx - cx) / hx) ** 2 < 1
        masks.append(m)
    return torch.from_numpy(np.stack(masks).astype(np.float32))


def oracle_forward(model, image: torch.Tensor, k: int, start: int) -> list[tuple]:
    """The reference's forward of the image repeated k times; per LeGrad block, the softmax
    attention as an autograd leaf (its hooked ``attention_maps``) and the feature f_l."""
    visual = model.visual
    x = visual._embeds(image[None].repeat(k, 1, 1, 1)).detach()
    layers = []
    for index, block in enumerate(visual.transformer.resblocks):
        if index < start:
            x = block(x).detach()
            continue
        attn = block.attn
        B, N, C = x.shape
        H = attn.num_heads
        q, kk, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, kk, v = (t.reshape(B, N, H, C // H).transpose(1, 2) for t in (q, kk, v))
        probs = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(C // H), dim=-1)
        probs = probs.detach().requires_grad_(True)
        o = (probs @ v).transpose(1, 2).reshape(B, N, C)
        z = x + block.ls_1(attn.out_proj(o))
        out = z + block.ls_2(block.mlp(block.ln_2(z)))
        feature = F.normalize(visual.ln_post(out.mean(dim=1)) @ visual.proj, dim=-1)
        layers.append((probs, feature))
        x = out.detach()
    return layers


def oracle_maps(model, layers: list[tuple], unit: torch.Tensor) -> torch.Tensor:
    """The reference's compute_legrad_clip for unit tokens [K, D] (double-backward ready)."""
    visual = model.visual
    k = unit.shape[0]
    accumulated = 0
    for probs, feature in layers:
        similarity = (unit * feature).sum()  # one-hot diagonal: token k against copy k
        (grad,) = torch.autograd.grad(similarity, [probs], retain_graph=True, create_graph=True)
        relevance = grad.clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:]
        expl = relevance.reshape(1, k, *visual.grid_size)
        accumulated = accumulated + F.interpolate(expl, scale_factor=visual.patch_size[0], mode="bilinear")
    flat = accumulated.reshape(1, k, -1)
    low, high = flat.min(-1, keepdim=True)[0], flat.max(-1, keepdim=True)[0]
    return ((flat - low) / (high - low)).reshape(accumulated.shape)[0]


def oracle_invert(model, image, masks, *, iterations=10, lr=0.5, alpha=0.0, wd=0.0, layer_index=-1):
    """compute_maskinversion as the reference writes it; returns the tokens [K, D]."""
    depth = len(model.visual.transformer.resblocks)
    start = layer_index if layer_index >= 0 else depth + layer_index
    k = masks.shape[0]
    with torch.no_grad():
        image_features = model.encode_image(image[None].repeat(k, 1, 1, 1))
    layers = oracle_forward(model, image, k, start)
    tokens = image_features.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([tokens], lr=lr, weight_decay=wd)
    for _ in range(iterations):
        unit = F.normalize(tokens, dim=-1)
        maps = F.interpolate(oracle_maps(model, layers, unit)[None], size=masks.shape[-2:], mode="bilinear")[0]
        inter = (maps.reshape(k, -1) * masks.reshape(k, -1)).sum(-1)
        dice = 1 - (2 * inter + 1) / (maps.reshape(k, -1).sum(-1) + masks.reshape(k, -1).sum(-1) + 1)
        reg = 1 - (F.normalize(image_features, dim=-1) * unit).sum(-1)
        optimizer.zero_grad()
        (dice.mean() + alpha * reg.mean()).backward(retain_graph=True)
        optimizer.step()
    return tokens.detach()


def gelu_tiny_clip(seed: int = 0) -> torch.nn.Module:
    """The tiny preset's architecture with exact GELU instead of QuickGELU."""
    register_tiny_clip_config()
    cfg = open_clip.get_model_config(TINY_CLIP_NAME)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=False)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_tiny_clip(seed=0)


def _image(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).randn(3, 96, 96).astype(np.float32))


@pytest.mark.parametrize("k, masks_per_slice", [(1, None), (7, None), (7, 3)])
def test_tokens_match_the_oracle(tiny, monkeypatch: pytest.MonkeyPatch, k: int, masks_per_slice: int | None) -> None:
    """Batched (and, with ``masks_per_slice``, sliced: 3 + 3 + 1 masks) equals the oracle.

    Conditioning: the comparison is only as good as the optimisation is stable. Two things
    can turn fp32 rounding into a different token: AdamW's eps when gradient entries are near
    1e-8 (the 1/K mean makes them small at large K), and a near-tie of the map's maximum,
    whose min-max normalisation sends the gradient to one pixel or the other. At K=101 the
    mask 30 of ``random_masks(101, 96, seed=101)`` is such a tie: the reference package itself
    gives cosine 0.98 between its fp32 and fp64 tokens there, and the oracle and the stage land
    on different sides of it. These inputs are well away from both (measured: stage vs
    oracle cosine >= 1 - 2e-7, the oracle's fp32 vs fp64 tokens >= 1 - 1e-7). Large K is
    checked against the reference package itself in ``test_invert_parity.py`` (one mask as
    101 copies), which is cheaper and closer to the spec.
    """
    if masks_per_slice is not None:
        monkeypatch.setattr(maskinversion, "_masks_per_slice", lambda *args: masks_per_slice)
    image, masks = _image(k), random_masks(k, 96, seed=k)
    tokens, losses, _ = invert_batch(tiny, image[None], [masks])
    expected = oracle_invert(tiny, image, masks)
    cosine = F.cosine_similarity(tokens[0], expected, dim=-1)
    assert cosine.min() >= 0.9999, cosine.min()
    assert torch.isfinite(losses[0]).all() and losses[0].shape == (k,)


@pytest.mark.parametrize("operator", ["materialize", "lazy"])
@pytest.mark.parametrize("variant", ["quickgelu-last", "quickgelu-two-layers", "gelu"])
def test_first_iteration_maps_match_the_oracle(tiny, variant: str, operator: str) -> None:
    model = gelu_tiny_clip() if variant == "gelu" else tiny
    layer_index = -2 if variant == "quickgelu-two-layers" else -1
    image = _image(3)
    with torch.no_grad():
        start_tokens = model.encode_image(image[None]).repeat(7, 1)
    depth = len(model.visual.transformer.resblocks)
    layers = oracle_forward(model, image, 7, depth + layer_index)
    expected = oracle_maps(model, layers, F.normalize(start_tokens, dim=-1))
    ours = legrad_maps(model, image[None], start_tokens[None], layer_index=layer_index, operator=operator)
    assert (ours[0] - expected.detach()).abs().max() <= 1e-5


def test_options_match_the_oracle_on_gelu() -> None:
    """alpha, weight decay and two LeGrad layers, on the GELU variant."""
    model, image, masks = gelu_tiny_clip(1), _image(5), random_masks(5, 96, seed=5)
    options = dict(iterations=6, lr=0.3, alpha=0.7, layer_index=-2)
    expected = oracle_invert(model, image, masks, wd=0.05, **options)
    tokens, _, _ = invert_batch(model, image[None], [masks], weight_decay=0.05, **options)
    assert F.cosine_similarity(tokens[0], expected, dim=-1).min() >= 0.999


def test_images_batched_together_match_one_by_one(tiny) -> None:
    images = torch.stack([_image(10), _image(11)])
    masks = [random_masks(3, 96, seed=1), random_masks(6, 96, seed=2)]
    together, losses, _ = invert_batch(tiny, images, masks)
    for b in range(2):
        alone, alone_losses, _ = invert_batch(tiny, images[b : b + 1], [masks[b]])
        # Not bit-equal: other matmul shapes round differently, and AdamW's per-element
        # normalisation turns rounding in near-zero gradient entries into visible steps.
        assert F.cosine_similarity(together[b], alone[0], dim=-1).min() >= 0.9999
        torch.testing.assert_close(losses[b], alone_losses[0], rtol=0, atol=1e-3)


def test_relevance_gradient_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-written backward of the clamp-and-mean (recomputed chunk by chunk)."""
    from masktok.stages import legrad

    monkeypatch.setitem(legrad.BUDGETS, "cpu", legrad.Budgets(2 * 2 * 17 * 17 * 2 * 8, 1 << 20))  # 3 chunks (float64)
    generator = torch.Generator().manual_seed(0)
    cotangent = torch.randn(2, 5, 17, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    values = torch.randn(2, 2, 17, 4, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(lambda c: legrad.PositiveGradRelevance.apply(c, values), (cotangent,))


def test_a_masks_relevance_does_not_depend_on_its_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seven copies of one cotangent in chunks of 3, 3 and 1 masks: every copy's relevance and
    gradient are bit-equal (a lone mask in its chunk once summed in another order)."""
    from masktok.stages import legrad

    monkeypatch.setitem(legrad.BUDGETS, "cpu", legrad.Budgets(2 * 3 * 37 * 37 * 4, 1 << 20))
    generator = torch.Generator().manual_seed(0)
    row = torch.randn(1, 1, 37, 16, generator=generator)
    cotangent = row.expand(1, 7, 37, 16).clone().requires_grad_(True)
    values = torch.randn(1, 2, 37, 8, generator=generator)
    relevance = legrad.PositiveGradRelevance.apply(cotangent, values)
    relevance.backward(torch.randn(1, 1, 37, generator=generator).expand(1, 7, 37))
    assert torch.equal(relevance, relevance[:, :1].expand_as(relevance))
    assert torch.equal(cotangent.grad, cotangent.grad[:, :1].expand_as(cotangent.grad))
