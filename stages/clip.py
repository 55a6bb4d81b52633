"""CLIP stage: global token, pooled patch tokens and MaskInversion (paper: OpenAI ViT-L/14-336).

This module holds the model part: the real open_clip loader for a local checkpoint file,
a tiny, seeded open_clip model registered under :data:`TINY_CLIP_NAME` so that it goes
through exactly the same ``create_model`` path, LLaVA-1.5 'pad' preprocessing of an image
and its masks, and the one vision forward per image (:func:`encode_vision`). MaskInversion
itself is in ``invert.py`` (LeGrad maths in ``legrad.py``).
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from ..schemas.record import POOLED_PATCHES
from .errors import ModelLoadError

#: open_clip model name of the tiny preset (config: model_configs/masktok-tiny-clip.json).
TINY_CLIP_NAME = "masktok-tiny-clip"
#: The paper's model: OpenAI weights were trained with QuickGELU, so use the -quickgelu config.
PAPER_CLIP_NAME = "ViT-L-14-336-quickgelu"

# What torch.load / load_state_dict raise for a bad file; turned into ModelLoadError.
_LOAD_ERRORS = (RuntimeError, ValueError, KeyError, EOFError, OSError, pickle.UnpicklingError)

_TINY_CONFIG = Path(__file__).parent / "model_configs" / f"{TINY_CLIP_NAME}.json"


def register_tiny_clip_config() -> None:
    """Make :data:`TINY_CLIP_NAME` known to open_clip (idempotent).

    Uses open_clip's public ``add_model_config``, which adds a json file to the config
    registry; afterwards ``open_clip.create_model(TINY_CLIP_NAME, pretrained=file)`` works
    as for any built-in model. Needs ``model_configs/*.json`` as package data.
    """
    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(_TINY_CONFIG)


def build_tiny_clip(seed: int = 0) -> open_clip.CLIP:
    """A randomly initialised tiny OpenAI-style CLIP (ViT, QuickGELU), in eval mode.

    Vision tower: 96 px, patch 4 (a 24x24 patch grid, as ViT-L/14-336 has), width 64, 3 layers; embed dim 32. The text
    tower is small but keeps OpenAI's vocabulary (49408) and context (77) so the standard
    open_clip tokenizer works with it. Every parameter comes from torch's global RNG, seeded
    here inside ``fork_rng`` so the caller's RNG state is left untouched.
    """
    register_tiny_clip_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    return model.eval()


def save_clip(model: torch.nn.Module, path: Path) -> Path:
    """Save a plain state dict (``torch.save(model.state_dict(), path)``), which open_clip
    loads for a local ``pretrained=`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def _is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip such as OpenAI's ViT-L-14-336px.pt."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def load_clip(
    model_name: str,
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build open_clip model ``model_name`` and load weights from a local file; eval mode.

    ``model_name`` is a built-in open_clip config name (see ``open_clip.list_models()``) or
    :data:`TINY_CLIP_NAME`. Accepted files for ``checkpoint``, as open_clip's
    ``create_model(model_name, pretrained=<file>)`` reads them (nothing is downloaded):

    - a plain state dict (``.pt``/``.pth``/``.bin``), e.g. the Hugging Face
      ``open_clip_pytorch_model.bin`` of ``timm/vit_large_patch14_clip_336.openai``, an
      open_clip training checkpoint (``{"state_dict": ...}``, ``module.`` prefixes are
      stripped), or :func:`save_clip` output; read with ``weights_only=True``;
    - a ``.safetensors`` file (e.g. ``open_clip_model.safetensors``);
    - OpenAI's TorchScript archive ``ViT-L-14-336px.pt``. torch refuses TorchScript with
      ``weights_only=True``, so for such an archive (and only then) torch.load runs with
      ``weights_only=False``: load only archives you trust. These weights need QuickGELU:
      a ``model_name`` whose config lacks it is refused (use ``ViT-L-14-336-quickgelu``).

    For state-dict files the QuickGELU choice cannot be checked: OpenAI weights (also via
    Hugging Face) must be loaded with a ``-quickgelu`` name or the features are silently off.
    The preprocessing settings are attached as ``model.visual.preprocess_cfg``.
    """
    register_tiny_clip_config()
    path = Path(checkpoint)
    if model_name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip model name {model_name!r} for {path}; expected a name from "
            f"open_clip.list_models(), e.g. {PAPER_CLIP_NAME!r} or {TINY_CLIP_NAME!r}"
        )
    if not path.is_file():
        raise ModelLoadError(
            f"CLIP checkpoint not found: {path}; expected a local weights file for {model_name}"
        )
    torchscript = _is_torchscript_archive(path)
    if torchscript and not open_clip.get_model_config(model_name).get("quick_gelu", False):
        raise ModelLoadError(
            f"{path} is an OpenAI TorchScript archive (QuickGELU weights) but {model_name!r} "
            f"uses GELU; use {model_name + '-quickgelu'!r}"
        )
    try:
        with warnings.catch_warnings():
            # torch announces the TorchScript dispatch and the jit deprecation; both expected.
            warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated.*")
            model = open_clip.create_model(
                model_name,
                pretrained=str(path.resolve()),  # a bare name could pass for a tag
                device=device,
                weights_only=not torchscript,
                require_pretrained=True,
            )
    except _LOAD_ERRORS as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(
            f"cannot load CLIP checkpoint {path} as {model_name!r}: {detail}"
        ) from exc
    return model.eval()


# --- preprocessing as LLaVA-1.5 ('pad') -----------------------------------------------------


def preprocess_cfg(model: torch.nn.Module) -> dict:
    """open_clip's preprocessing settings of ``model`` (size, mean, std)."""
    return open_clip.get_model_preprocess_cfg(model)


def pad_offsets(width: int, height: int) -> tuple[int, int, int]:
    """(side, left, top) of LLaVA's ``expand2square``: the image centred on a square canvas."""
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def llava_pad_image(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> normalised float tensor [3, size, size], as LLaVA-1.5 'pad'.

    The canvas is filled with the mean colour as LLaVA does (``int(m * 255)`` per channel),
    then PIL bicubic resizes it to ``size`` (what both CLIPImageProcessor and open_clip's
    transform do for a square image), then /255 and (x - mean) / std.
    """
    height, width = image.shape[:2]
    side, left, top = pad_offsets(width, height)
    canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in mean))
    canvas.paste(Image.fromarray(image, "RGB"), (left, top))
    resized = np.asarray(canvas.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(resized).permute(2, 0, 1)
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def llava_pad_masks(masks: Iterable[np.ndarray], size: int) -> torch.Tensor:
    """Binary masks [H, W] of the original image -> soft masks [K, size, size] in [0, 1].

    Same geometry as :func:`llava_pad_image` (same canvas offset, PIL's pixel-centre
    convention); PIL bilinear instead of bicubic so coverage stays in [0, 1] without ringing.
    One mask at a time, so memory stays bounded for large images.
    """
    out = []
    for mask in masks:
        height, width = mask.shape
        side, left, top = pad_offsets(width, height)
        canvas = Image.new("F", (side, side), 0.0)
        canvas.paste(Image.fromarray(np.asarray(mask, dtype=np.float32), "F"), (left, top))
        out.append(np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float32))
    if not out:
        return torch.zeros(0, size, size)
    return torch.from_numpy(np.clip(np.stack(out), 0.0, 1.0))


# --- one vision forward ----------------------------------------------------------------------


@dataclass
class VisionFeatures:
    """Everything the record and LeGrad need from one forward of B images."""

    global_token: torch.Tensor  # [B, D] what open_clip's encode_image returns
    patch_tokens: torch.Tensor  # [B, 36, C] penultimate-block patch tokens, pooled 4x4
    patch_norm_mean: torch.Tensor  # [B] over the unpooled patch-token norms
    patch_norm_std: torch.Tensor  # [B] population std (ddof 0)
    block_inputs: dict[int, torch.Tensor]  # residual stream entering block l, batch first
    grid: tuple[int, int]  # patch grid (rows, cols)


@torch.no_grad()
def encode_vision(model: torch.nn.Module, images: torch.Tensor, keep_inputs_from: int) -> VisionFeatures:
    """One forward of open_clip ViT ``model.visual`` over ``images`` [B, 3, S, S].

    Uses the tower's own ``_embeds``/blocks/``_pool``, so ``global_token`` is
    ``encode_image`` (to float rounding: under no_grad torch may take its fused MHA path). Patch tokens are the output of the second-to-last block, CLS
    excluded (LLaVA's ``mm_vision_select_layer=-2``), before any norm; they are average
    pooled to a 6x6 grid (4x4 windows on ViT-L/14-336's 24x24 grid). The inputs of
    blocks ``>= keep_inputs_from`` are kept for LeGrad.
    """
    visual = model.visual
    transformer = visual.transformer
    x = visual._embeds(images)
    grid = tuple(int(g) for g in visual.grid_size)
    blocks = list(transformer.resblocks)
    kept: dict[int, torch.Tensor] = {}
    penultimate = x
    for index, block in enumerate(blocks):
        if index >= keep_inputs_from:
            kept[index] = x
        x = block(x) if transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        if index == len(blocks) - 2:
            penultimate = x
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    patches = penultimate[:, 1:].float()
    norms = patches.norm(dim=-1)
    grid_view = patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)
    side = int(POOLED_PATCHES**0.5)
    pooled_patches = F.adaptive_avg_pool2d(grid_view, side).flatten(2).transpose(1, 2)
    return VisionFeatures(
        global_token=pooled.float(),
        patch_tokens=pooled_patches,
        patch_norm_mean=norms.mean(dim=1),
        patch_norm_std=norms.std(dim=1, unbiased=False),
        block_inputs=kept,
        grid=grid,
    )
