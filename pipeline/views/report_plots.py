"""The report's charts, each a PNG (bytes) drawn on matplotlib's Agg canvas (no pyplot state)."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np

from ..status import format_rate
from .report_stats import BINS, JobStats

BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#9e9e9e"


def _figure(width: float = 6.4, height: float = 3.2, panels: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])


def throughput(times: list[tuple[datetime, int]]) -> bytes:
    """Images committed over time (a step per commit) and the rate between commits."""
    fig, (ax,) = _figure()
    if len(times) < 2:
        _empty(ax, "one commit: no throughput to show yet")
        return _png(fig)
    t0 = times[0][0]
    minutes = np.array([(t - t0).total_seconds() / 60 for t, _ in times])
    done = np.cumsum([n for _, n in times])
    ax.step(minutes, done, where="post", color=BLUE, marker="o", markersize=3)
    ax.set_xlabel("minutes since the first commit")
    ax.set_ylabel("images committed (cumulative)")
    span = minutes[-1] * 60
    if span > 0:
        ax.set_title(f"{format_rate((done[-1] - done[0]) / span)} after the first commit", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def objects_kept(stats: JobStats) -> bytes:
    fig, (ax,) = _figure()
    if not stats.objects_kept:
        _empty(ax, "no image done yet")
        return _png(fig)
    counts = np.bincount(stats.objects_kept)
    ax.bar(np.arange(len(counts)), counts, color=BLUE, width=0.8)
    ax.set_xticks(np.arange(len(counts)) if len(counts) <= 25 else np.linspace(0, len(counts) - 1, 11).round())
    ax.set_xlim(-0.6, len(counts) - 0.4)
    ax.set_xlabel("objects kept per image (keep_rank >= 0, background not counted)")
    ax.set_ylabel("images")
    ax.set_title(f"mean {np.mean(stats.objects_kept):.1f}, median {np.median(stats.objects_kept):.0f} "
                 f"over {len(stats.objects_kept)} images", fontsize=10)
    return _png(fig)


def _bars(ax, counts: np.ndarray, colour: str, label: str, bottom: np.ndarray | None = None) -> None:
    ax.bar(BINS[:-1], counts, width=np.diff(BINS), align="edge", color=colour, label=label, bottom=bottom,
           edgecolor="white", linewidth=0.3)


def inversion_loss(stats: JobStats) -> bytes:
    fig, (ax,) = _figure()
    _bars(ax, stats.loss_kept, BLUE, f"kept rows ({stats.loss_kept.sum()})")
    _bars(ax, stats.loss_suppressed, GREY, f"suppressed rows ({stats.loss_suppressed.sum()})", bottom=stats.loss_kept)
    ax.set_xlabel("final dice loss of the inversion (0 = the map matches the mask)")
    ax.set_ylabel("object rows (background included)")
    ax.legend(fontsize=8)
    return _png(fig)


def mask_area(stats: JobStats) -> bytes:
    fig, (ax,) = _figure()
    if not stats.area.sum():
        _empty(ax, "no kept object")
        return _png(fig)
    _bars(ax, stats.area, BLUE, "kept objects")
    ax.set_xlabel("area / image area (kept objects)")
    ax.set_ylabel("objects")
    return _png(fig)


def patch_norms(stats: JobStats) -> bytes:
    fig, axes = _figure(width=8.0, panels=2)
    for ax, values, name in zip(axes, (stats.patch_norm_mean, stats.patch_norm_std), ("mean", "std")):
        if not values:
            _empty(ax, "no image done yet")
            continue
        ax.hist(values, bins=min(40, max(5, len(values) // 2)), color=BLUE, edgecolor="white", linewidth=0.3)
        ax.set_xlabel(f"per-image {name} of the 576 patch-token norms")
        ax.set_ylabel("images")
        ax.set_title(f"dataset mean {np.mean(values):.3g}", fontsize=10)
    return _png(fig)
