"""POPE score against the number of visual tokens: one point per answer file of the same
question set, each answered at another token budget (the shape of the Mask-LLaVA paper's
Figure 5). A file's token count is the mean of its answers' ``metadata.visual_tokens``
(the tokens the model saw, which varies with the number of objects in each image)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from .pope import PopeReport, load_pope_labels, pair_answers, percent, read_jsonl, score_pairing


@dataclass
class SweepPoint:
    """One answer file: its token spec, mean visual tokens and POPE report."""

    answers_path: Path
    spec: str
    visual_tokens: float
    report: PopeReport

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: path, spec, tokens, overall scores and leftover counts."""
        pairing = self.report.pairing
        return {"answers": str(self.answers_path), "spec": self.spec, "visual_tokens": self.visual_tokens,
                "overall": asdict(self.report.overall),
                "labels_without_answer": len(pairing.labels_without_answer),
                "answers_without_label": len(pairing.answers_without_label),
                "ambiguous_answers": len(pairing.ambiguous_answers)}


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    metadata = row.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def mean_visual_tokens(rows: Sequence[tuple[int, dict[str, Any]]], path: Path) -> float:
    """Mean of ``metadata.visual_tokens`` over the rows; DataError naming the file (and the
    first line) when the file is empty or a line lacks a numeric count."""
    counts = []
    for number, row in rows:
        value = _metadata(row).get("visual_tokens")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{path}:{number}: no metadata.visual_tokens (a sweep needs answers "
                            "written by masktok answer, which records the tokens each answer saw)")
        counts.append(value)
    if not counts:
        raise DataError(f"{path}: no answers")
    return sum(counts) / len(counts)


def token_spec_of(rows: Sequence[tuple[int, dict[str, Any]]], path: Path) -> str:
    """The file's ``metadata.tokens`` (the file stem when no line has one); DataError when
    its lines name different specs."""
    specs = {str(_metadata(row)["tokens"]) for _, row in rows if _metadata(row).get("tokens") is not None}
    if len(specs) > 1:
        raise DataError(f"{path}: answers of several token specs ({', '.join(sorted(specs))}); "
                        "a sweep needs one file per spec")
    return specs.pop() if specs else Path(path).stem


def sweep_pope(answer_paths: Sequence[Path], label_paths: Sequence[Path]) -> list[SweepPoint]:
    """Score each answer file against the same POPE labels; points sorted by visual tokens
    (then spec)."""
    labels = load_pope_labels(label_paths)
    points = []
    for path in answer_paths:
        rows = read_jsonl(path)
        tokens = mean_visual_tokens(rows, path)
        report = score_pairing(pair_answers(rows, labels, path))
        points.append(SweepPoint(Path(path), token_spec_of(rows, path), tokens, report))
    return sorted(points, key=lambda p: (p.visual_tokens, p.spec))


def format_tokens(value: float) -> str:
    """A token count rounded to one decimal, without a trailing ".0" (135, 15.5)."""
    return f"{round(float(value), 1):g}"


def format_sweep_table(points: Sequence[SweepPoint]) -> str:
    """One row per file: tokens, spec, n, accuracy, F1, yes-ratio (%), and the file."""
    header = ("tokens", "spec", "n", "acc%", "F1%", "yes%", "answers")
    rows = [header] + [(format_tokens(p.visual_tokens), p.spec, str(p.report.overall.n),
                        percent(p.report.overall.accuracy), percent(p.report.overall.f1),
                        percent(p.report.overall.yes_ratio), str(p.answers_path)) for p in points]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left = {1, 6}
    return "\n".join("  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def plot_sweep(points: Sequence[SweepPoint], out_path: Path, title: str = "POPE") -> Path:
    """Write a PNG of F1 and accuracy (%) against visual tokens (log x axis, ticks at the
    points' token counts), each point labelled with its token spec. Undefined scores are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    xs = [p.visual_tokens for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        for name, marker in (("f1", "o"), ("accuracy", "s")):
            shown = [(x, 100 * getattr(p.report.overall, name)) for x, p in zip(xs, points)
                     if getattr(p.report.overall, name) is not None]
            if shown:
                ax.plot(*zip(*shown), marker=marker, label="F1" if name == "f1" else "accuracy")
        for x, p in zip(xs, points):
            y = p.report.overall.f1 if p.report.overall.f1 is not None else p.report.overall.accuracy
            if y is not None:
                ax.annotate(p.spec, (x, 100 * y), textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.set_xscale("log")
        ticks = sorted(set(xs))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, [format_tokens(t) for t in ticks])
        ax.set_xlim(ticks[0] / 1.3, ticks[-1] * 1.8)  # room for the last point's label
        ax.margins(y=0.12)
        ax.set_xlabel("visual tokens per image (log scale)")
        ax.set_ylabel("score (%)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out_path = Path(out_path)
        try:
            fig.savefig(out_path, format="png")
        except OSError as exc:
            raise DataError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out_path
