"""Norm scaling of the global and object tokens to the patch tokens' scale (paper 3.3, C.7).

The projector sees three token types whose norms differ by an order of magnitude (the CLIP
image embedding, MaskInversion tokens, penultimate-layer patch tokens). The paper rescales
the global and object tokens "on the mean and standard deviation of the norms of the patch
tokens"; its formulas did not survive in our copy of the text. docs/trainer.md ("Norm
scaling") maps each sentence of 3.3 and C.7 to the formula below and lists what masktok
chose where the paper is silent. Every mode keeps a token's direction and changes only its
norm ``n = ||t||``:

``per-image-std`` (the default; 3.3 + C.7, per image as the introduction finds best)
    ``n' = mu_p + sigma_p * (n - m_T) / s_T``, ``t' = t * n' / n``. ``(mu_p, sigma_p)``: mean
    and population std of the norms of *this image's* 36 pooled patch tokens, the "local
    patch features" the LM sees next to them (3.1), computed from the cached tokens.
    ``(m_T, s_T)``, the token type's "own" statistics (C.7), per image too: for objects, the
    mean and std of the norms of all the image's object rows (num_objects, background
    included: the rows the model is trained on), whichever rows a spec then takes, so
    test-time pruning never changes the tokens that stay. The global token is one token per
    image, so it has no spread of its own: masktok takes its standardised value as 0, i.e.
    ``n' = mu_p`` (its own mean is itself). ``s_T`` below 1e-6 (one object row, or equal
    norms) also gives 0.
``per-image-std-unpooled``
    The same with ``(mu_p, sigma_p)`` of the 576 unpooled patch tokens (the record's
    ``patch_norm_mean``/``patch_norm_std``, what the vision encoder gave before pooling).
``per-image`` (masktok's default before issue 38)
    ``t' = t * mu_p / n`` with the mean of the 576 unpooled norms; no standard deviation.
``dataset-global``
    ``t' = t * M_p / n`` with ``M_p`` the mean patch-token norm over the whole cache (the mean
    of ``patch_norm_mean`` over ok images: each image has 576 patches, so this is the mean
    over all patches). Images then keep their own direction but share one scale.
``c7`` (C.7 with data-set statistics)
    ``n' = mu_p + sigma_p * (n - m_T) / s_T`` with the 576-token statistics of the image and
    ``(m_T, s_T)`` the mean/std of the norms of type T over the cache (T = global: one per ok
    image; T = object: every row with keep_rank >= 0).
``none``
    ``t' = t``.

In the standardising modes ``n'`` is floored at ``1e-6`` so a token far below its type's
mean never flips sign. A zero token stays zero in every mode. The statistics a run used are
stored in its checkpoint (its mode by name), so ``masktok generate`` scales exactly as
training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

MODES = ("none", "per-image-std", "per-image-std-unpooled", "per-image", "dataset-global", "c7")
DEFAULT_MODE = "per-image-std"
#: Modes whose patch statistics are the 36 pooled tokens' (the others use the record's 576-token ones).
POOLED_STATS = ("per-image-std",)
PER_IMAGE_STD = ("per-image-std", "per-image-std-unpooled")
EPS = 1e-6


@dataclass(frozen=True)
class ImageNorms:
    """One image's statistics a mode needs: the patch norms' mean and std, and (per-image-std
    modes) the mean and std of its object rows' norms."""

    patch_mean: float
    patch_std: float
    object_mean: float = 0.0
    object_std: float = 0.0


def _mean_std(norms: np.ndarray) -> tuple[float, float]:
    return (float(norms.mean()), float(norms.std())) if norms.size else (0.0, 0.0)


def image_norms(record: dict[str, Any], mode: str) -> ImageNorms:
    """The statistics of ``record`` (a reader's record: object axis trimmed to num_objects)
    that ``mode`` scales with (see the module docstring)."""
    if mode in POOLED_STATS:
        patch = np.linalg.norm(np.asarray(record["patch_tokens"], dtype=np.float32), axis=-1)
        mu_p, sigma_p = _mean_std(patch.astype(np.float64))
    else:
        mu_p, sigma_p = float(record["patch_norm_mean"]), float(record["patch_norm_std"])
    if mode not in PER_IMAGE_STD:
        return ImageNorms(mu_p, sigma_p)
    objects = np.linalg.norm(np.asarray(record["object_tokens"], dtype=np.float32), axis=-1)
    return ImageNorms(mu_p, sigma_p, *_mean_std(objects.astype(np.float64)))


@dataclass(frozen=True)
class CacheStats:
    """Norm statistics over the ok images of a cache (see trainer/data/stats.py)."""

    patch_norm_mean: float
    patch_norm_std: float
    global_norm_mean: float
    global_norm_std: float
    object_norm_mean: float
    object_norm_std: float
    images: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> "CacheStats":
        return cls(**d)


def target_norms(norms: torch.Tensor, kind: str, mode: str, mu_p: float, sigma_p: float,
                 stats: CacheStats | None, own: tuple[float, float] | None = None) -> torch.Tensor:
    """The norm each token of type ``kind`` ("global" or "object") is rescaled to; ``own``:
    the type's per-image (mean, std) for the per-image-std modes (None: standardised to 0)."""
    if mode in PER_IMAGE_STD:
        m_t, s_t = own if own is not None else (0.0, 0.0)
        z = (norms - m_t) / s_t if kind == "object" and s_t > EPS else torch.zeros_like(norms)
        return (mu_p + sigma_p * z).clamp_min(EPS)
    if mode == "per-image":
        return torch.full_like(norms, float(mu_p))
    if mode == "dataset-global":
        return torch.full_like(norms, _need(stats, mode).patch_norm_mean)
    if mode == "c7":
        s = _need(stats, mode)
        m_t, s_t = (s.global_norm_mean, s.global_norm_std) if kind == "global" else (s.object_norm_mean, s.object_norm_std)
        z = (norms - m_t) / max(s_t, EPS)
        return (mu_p + sigma_p * z).clamp_min(EPS)
    raise ValueError(f"unknown scaling mode {mode!r}: use one of {MODES}")


def scale_tokens(tokens: torch.Tensor, kind: str, mode: str, mu_p: float, sigma_p: float,
                 stats: CacheStats | None = None, own: tuple[float, float] | None = None) -> torch.Tensor:
    """Rescale the rows of ``tokens`` [n, D] (float32) as the module docstring defines."""
    if mode == "none" or tokens.numel() == 0:
        return tokens
    norms = tokens.norm(dim=-1)
    target = target_norms(norms, kind, mode, mu_p, sigma_p, stats, own)
    factor = torch.where(norms > 0, target / norms.clamp_min(EPS), torch.zeros_like(norms))
    return tokens * factor[:, None]


def _need(stats: CacheStats | None, mode: str) -> CacheStats:
    if stats is None:
        raise ValueError(f"scaling mode {mode!r} needs the cache statistics (trainer.data.stats.cache_stats)")
    return stats
