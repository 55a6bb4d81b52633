"""The paper's Mask-LLaVA figures, as printed in reference/mask-llava-paper.txt: what
``masktok score sweep`` shows beside a reproduction's scores.

Keyed by model ("7b", "13b"), token budget (trainer/visual/token_spec.py ``PAPER_SPECS`` names the
spec of each) and benchmark: ``vqav2``, ``gqa``, ``pope``, ``mme`` (perception), ``mmbench``,
``sqa`` (SQA-IMG), ``vizwiz``, ``mmvet``. Each figure names its table.

Which tables (masktok's reading; the paper gives no single table per budget):

- 7B at 57, 42 and 15 tokens: Table 1 (the "-e2" rows), every benchmark.
- 7B at 138 and 29 tokens: only the appendix tables print a headline figure: Table 9
  (ScienceQA, IMG-Accuracy) and Table 10 (MM-Vet, Total). Table 5 prints MME per category
  only (no total), Table 7 MMBench per category; they are left out rather than summed.
  Where Table 1 and an appendix table both give 57 tokens they differ (SQA-IMG 68.8 vs 69.5,
  MM-Vet 24.9 vs 27.8); Table 1's is kept.
- 13B at 138, 57 and 29 tokens: Table 4 (no VQAv2 column).
- Not here: the ablations of Tables 2, 3 and 8, whose rows for the same composition differ
  from Table 1 (e.g. 36+1+5 tokens: POPE 85.33 in Table 3, 83.8 in Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperFigure:
    """One printed figure and the table it comes from."""

    value: float
    table: str


def _row(table: str, **figures: float) -> dict[str, PaperFigure]:
    return {bench: PaperFigure(value, table) for bench, value in figures.items()}


#: model -> token budget -> benchmark -> the paper's figure.
PAPER_FIGURES: dict[str, dict[int, dict[str, PaperFigure]]] = {
    "7b": {
        # Table 1, "Mask-LLaVA (ours) - e2", 90% / 57 tokens
        57: _row("Table 1", vqav2=74.8, gqa=60.6, pope=83.7, mme=1415.0, mmbench=63.1, sqa=68.8,
                 vizwiz=51.8, mmvet=24.9),
        # Table 1, "Mask-LLaVA (ours)- e2", 97% / 42 tokens
        42: _row("Table 1", vqav2=74.8, gqa=60.5, pope=83.8, mme=1402.7, mmbench=63.2, sqa=68.8,
                 vizwiz=52.1, mmvet=25.7),
        # Table 1, "Mask-LLaVA (ours)- e2", 97% / 15 tokens
        15: _row("Table 1", vqav2=71.5, gqa=58.5, pope=82.1, mme=1395.8, mmbench=62.1, sqa=68.4,
                 vizwiz=52.8, mmvet=21.9),
        # Table 9 (ScienceQA IMG-Accuracy) and Table 10 (MM-Vet Total), "Mask-LLaVA | 138"
        138: {**_row("Table 9", sqa=70.5), **_row("Table 10", mmvet=30.0)},
        # Table 9 and Table 10, "Mask-LLaVA | 29"
        29: {**_row("Table 9", sqa=68.5), **_row("Table 10", mmvet=25.2)},
    },
    "13b": {
        # Table 4, "Mask-LLaVA-13B (ours)", 75% / 138, 90% / 57, 95% / 29 tokens
        138: _row("Table 4", gqa=60.2, pope=85.5, mme=1439.6, mmbench=64.9, sqa=70.8, vizwiz=49.6, mmvet=31.1),
        57: _row("Table 4", gqa=59.6, pope=85.8, mme=1434.9, mmbench=64.6, sqa=70.6, vizwiz=50.1, mmvet=29.0),
        29: _row("Table 4", gqa=58.4, pope=85.6, mme=1422.6, mmbench=64.0, sqa=70.6, vizwiz=51.8, mmvet=30.0),
    },
}

PAPER_MODELS = tuple(PAPER_FIGURES)


def paper_figure(model: str, budget: int | None, benchmark: str) -> PaperFigure | None:
    """The paper's figure for ``benchmark`` at ``budget`` tokens with ``model``; None where the
    paper prints none."""
    if budget is None:
        return None
    return PAPER_FIGURES[model].get(budget, {}).get(benchmark)
