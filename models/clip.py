"""open_clip CLIP, the paper's vision encoder (OpenAI ViT-L/14-336): the loader for a local
checkpoint file and a tiny, seeded open_clip model registered under :data:`TINY_CLIP_NAME`, so
that it goes through exactly the same ``create_model`` path."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch

from ..schemas.errors import ModelLoadError
from ..schemas.refusals import save_torch
from .clip_config import PAPER_CLIP_NAME, TINY_CLIP_CONFIG, TINY_CLIP_NAME
from .weight_files import weights_file_problem

# Weights open_clip reads with numpy (big_vision's archives): not checked here.
_NUMPY_FORMATS = (".npz", ".npy")

# What torch.load / load_state_dict raise for a bad file; turned into ModelLoadError.
_LOAD_ERRORS = (RuntimeError, ValueError, KeyError, EOFError, OSError, pickle.UnpicklingError)


def register_tiny_clip_config() -> None:
    """Make :data:`TINY_CLIP_NAME` known to open_clip (idempotent).

    Uses open_clip's public ``add_model_config``, which adds a json file to the config
    registry; afterwards ``open_clip.create_model(TINY_CLIP_NAME, pretrained=file)`` works
    as for any built-in model. Needs ``model_configs/*.json`` as package data.
    """
    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(TINY_CLIP_CONFIG)


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
    save_torch(model.state_dict(), path)
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
    problem = None if path.suffix in _NUMPY_FORMATS else weights_file_problem(path)
    if problem:
        raise ModelLoadError(f"cannot load CLIP checkpoint {path} as {model_name!r}: {problem}")
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


def preprocess_cfg(model: torch.nn.Module) -> dict:
    """open_clip's preprocessing settings of ``model`` (size, mean, std)."""
    return open_clip.get_model_preprocess_cfg(model)
