"""Norm scaling of the global and object tokens to the patch tokens' scale (paper 3.3, C.7).

The projector sees three token types whose norms differ by an order of magnitude (the CLIP
image embedding, MaskInversion tokens, penultimate-layer patch tokens). The paper rescales
the global and object tokens "on the mean and standard deviation of the norms of the patch
tokens"; its formulas did not survive in our copy of the text, so the exact maps are ours.
Every mode keeps a token's direction and changes only its norm ``n = ||t||``:

``none``
    ``t' = t``.
``per-image`` (paper 3.3)
    ``t' = t * mu_p / n``: every global/object token gets the mean norm ``mu_p`` of *this
    image's* 576 patch tokens (``patch_norm_mean``). A single token has no spread of its
    own to map onto ``sigma_p``, so the std is not used here.
``dataset-global``
    ``t' = t * M_p / n`` with ``M_p`` the mean patch-token norm over the whole cache (the mean
    of ``patch_norm_mean`` over ok images: each image has 576 patches, so this is the mean
    over all patches). Images then keep their own direction but share one scale.
``c7`` (appendix C.7)
    Standardise the token's norm by its own type's statistics, then map onto this image's
    patch statistics: ``n' = mu_p + sigma_p * (n - m_T) / s_T``, ``t' = t * n' / n``, where
    ``(m_T, s_T)`` are the mean/std of the norms of type T over the cache (T = global: one
    per ok image; T = object: every row with keep_rank >= 0). Dataset-level type statistics
    (rather than the image's own objects) make a token's value independent of how many
    objects a spec keeps, so test-time object pruning does not change the tokens that stay.
    ``n'`` is floored at ``1e-6`` so a token far below its type's mean never flips sign.

A zero token stays zero in every mode. The statistics a run used are stored in its
checkpoint, so ``masktok generate`` scales exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

MODES = ("none", "per-image", "dataset-global", "c7")
EPS = 1e-6


@dataclass(frozen=True)
class CacheStats:
    """Norm statistics over the ok images of a cache (see trainer/stats.py)."""

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
                 stats: CacheStats | None) -> torch.Tensor:
    """The norm each token of type ``kind`` ("global" or "object") is rescaled to."""
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
                 stats: CacheStats | None = None) -> torch.Tensor:
    """Rescale the rows of ``tokens`` [n, D] (float32) as the module docstring defines."""
    if mode == "none" or tokens.numel() == 0:
        return tokens
    norms = tokens.norm(dim=-1)
    target = target_norms(norms, kind, mode, mu_p, sigma_p, stats)
    factor = torch.where(norms > 0, target / norms.clamp_min(EPS), torch.zeros_like(norms))
    return tokens * factor[:, None]


def _need(stats: CacheStats | None, mode: str) -> CacheStats:
    if stats is None:
        raise ValueError(f"scaling mode {mode!r} needs the cache statistics (trainer.stats.cache_stats)")
    return stats
