"""Reference tokens from ``maskinversion-torch`` 1.1 / ``legrad-torch`` 1.1, stored as a test fixture.

The reference packages need open_clip_torch 2.23, which cannot share the project's
environment (open_clip_torch 3.x), so this script runs in a separate virtual environment
and imports nothing from masktok. Build it once (torch pinned to the project's build):

    python3 -m venv /tmp/refenv
    printf 'torch==2.14.1\\ntorchvision==0.29.1\\n' > /tmp/refconstraints.txt
    /tmp/refenv/bin/pip install -c /tmp/refconstraints.txt \\
        open_clip_torch==2.23.0 maskinversion-torch==1.1 legrad-torch==1.1

then, from the repository root:

    /tmp/refenv/bin/python tools/reference_parity.py

It builds the tiny preset's architecture (``stages/model_configs/masktok-tiny-clip.json``)
under open_clip 2.23 with seeded random weights, a fixed image and masks (edge cases
included), runs the reference ``MaskInversion.compute_maskinversion`` for a few settings
(QuickGELU and GELU), and writes ``tests/fixtures/maskinversion_reference.pt``: the vision
tower's state dict, the inputs, and per setting the first iteration's explainability maps,
the final tokens and each mask's final dice loss. ``tests/test_invert_parity.py`` compares
the project's implementation against it. Rerun only when the reference semantics to match
change; the fixture is about 1.5 MB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from maskinversion import MaskInversion
from maskinversion.utils import batched_dice_loss

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "stages" / "model_configs" / "masktok-tiny-clip.json"
FIXTURE = ROOT / "tests" / "fixtures" / "maskinversion_reference.pt"
SEED = 7
#: The K-dependence case: this mask of :func:`inputs`, alone and as COPIES copies.
K_MASK, COPIES = 3, 101
CASES = {
    "quickgelu-defaults": dict(quick_gelu=True, layer_index=-1, alpha=0.0, lr=0.5, iterations=10, wd=0.0),
    "quickgelu-options": dict(quick_gelu=True, layer_index=-2, alpha=0.5, lr=0.3, iterations=8, wd=0.05),
    "gelu-defaults": dict(quick_gelu=False, layer_index=-1, alpha=0.0, lr=0.5, iterations=10, wd=0.0),
}


def build_model(quick_gelu: bool, visual_state: dict | None) -> torch.nn.Module:
    """The tiny architecture under open_clip 2.23; seeded weights or the given vision tower."""
    cfg = json.loads(CONFIG.read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=quick_gelu)
    if visual_state is not None:
        model.visual.load_state_dict(visual_state)
    return model.eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image [3, 96, 96] (already normalised) and 8 masks [8, 96, 96]."""
    rng = np.random.RandomState(SEED)
    coarse = torch.from_numpy(rng.randn(1, 3, 12, 12).astype(np.float32))
    image = F.interpolate(coarse, size=(96, 96), mode="bicubic")[0] + 0.3 * torch.randn(
        3, 96, 96, generator=torch.Generator().manual_seed(SEED))
    yy, xx = np.mgrid[:96, :96]
    masks = np.zeros((8, 96, 96), np.float32)
    masks[0, 10:50, 20:70] = 1
    masks[1] = ((yy - 60) / 20.0) ** 2 + ((xx - 30) / 25.0) ** 2 < 1
    masks[2, 70:, 60:] = 1
    masks[3, :, :48] = 1
    masks[4] = 1  # full image
    masks[5, 40, 40] = 1  # one pixel
    # masks[6] stays empty
    masks[7] = 1 - masks[:4].max(0)  # background: what no object covers
    return image, torch.from_numpy(masks)


def final_dice(wrapper: MaskInversion, image: torch.Tensor, masks: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Each mask's dice loss for the returned tokens, with the reference's own LeGrad."""
    wrapper.encode_image(image[None].repeat(len(masks), 1, 1, 1))
    maps = wrapper.compute_legrad(text_embedding=F.normalize(tokens, dim=-1))
    maps = F.interpolate(maps, size=masks.shape[-2:], mode="bilinear")[0]
    return torch.stack([batched_dice_loss(maps[k : k + 1], masks[k : k + 1]) for k in range(len(masks))])


def k_dependence(visual_state: dict, image: torch.Tensor, masks: torch.Tensor) -> dict:
    """Tokens of mask K_MASK alone and as COPIES copies (QuickGELU defaults), refused unless
    the float64 reference gives the same tokens (the comparison must be well-conditioned)."""
    case = CASES["quickgelu-defaults"]
    options = {k: case[k] for k in ("layer_index", "alpha", "lr", "iterations", "wd")}

    def tokens(count: int, dtype: torch.dtype) -> torch.Tensor:
        wrapper = MaskInversion(build_model(True, visual_state), **options)
        wrapper.to(dtype)  # LeWrapper copied the model's bound methods: this converts the model
        mask = masks[K_MASK : K_MASK + 1].repeat(count, 1, 1)
        out = wrapper.compute_maskinversion(image[None].to(dtype), mask.to(dtype)).detach()
        assert (out - out[0]).abs().max() == 0, "copies of one mask must get one token"
        return out[0].float()

    alone, copies = tokens(1, torch.float32), tokens(COPIES, torch.float32)
    for fp32, count in ((alone, 1), (copies, COPIES)):
        cosine = F.cosine_similarity(fp32, tokens(count, torch.float64).float(), dim=0).item()
        if cosine < 1 - 1e-7:
            raise SystemExit(f"K={count}: fp32 and fp64 tokens differ (cosine {cosine}); the case is "
                             "ill-conditioned, choose another K_MASK")
    print("k-dependence: cosine alone vs copies", F.cosine_similarity(alone, copies, dim=0).item())
    return {**case, "mask_index": K_MASK, "copies": COPIES, "alone": alone.clone(), "copies_token": copies.clone()}


def main() -> None:
    visual_state = {k: v.clone() for k, v in build_model(True, None).visual.state_dict().items()}
    image, masks = inputs()
    results = {}
    for name, case in CASES.items():
        options = {k: case[k] for k in ("layer_index", "alpha", "lr", "iterations", "wd")}
        wrapper = MaskInversion(build_model(case["quick_gelu"], visual_state), **options)
        _, first_maps = wrapper.compute_maskinversion(image[None], masks, iterations=1, return_expl_map=True)
        wrapper = MaskInversion(build_model(case["quick_gelu"], visual_state), **options)
        tokens = wrapper.compute_maskinversion(image[None], masks).detach()
        results[name] = {
            **case,
            "first_maps": first_maps.detach()[0].clone(),
            "tokens": tokens.clone(),
            "losses": final_dice(wrapper, image, masks, tokens).detach(),
        }
        print(name, "final dice", results[name]["losses"].numpy().round(4))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"visual_state": visual_state, "image": image, "masks": masks.to(torch.uint8),
                "cases": results, "k_dependence": k_dependence(visual_state, image, masks), "versions": {"open_clip": "2.23.0", "maskinversion-torch": "1.1",
                                               "legrad-torch": "1.1", "torch": str(torch.__version__)}}, FIXTURE)
    print("wrote", FIXTURE, FIXTURE.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
