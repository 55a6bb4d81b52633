"""``masktok score pope`` and ``masktok score sweep``: POPE scores of LLaVA answer files, and
score against token budget (registered in pipeline/cli.py with ``main.add_command(score)``).
Bad input (a missing or malformed file, a label other than yes/no) is a ``DataError``: one
line on stderr, exit status 1 (schemas/errors.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..schemas.errors import DataError, Group

_FILE = click.Path(dir_okay=False, path_type=Path)
_LABELS = click.option("--labels", "label_paths", type=_FILE, multiple=True, required=True,
                       help="POPE label jsonl (question_id, label yes/no, optional category); repeat "
                            "for several categories. coco_pope_<cat>.json files name their category.")


@click.group("score", cls=Group)
def score() -> None:
    """Score LLaVA-format answer files (POPE, as LLaVA-1.5's eval_pope.py)."""


@score.command("pope")
@click.option("--answers", "answers_path", type=_FILE, required=True, help="LLaVA answer jsonl.")
@_LABELS
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def pope(answers_path: Path, label_paths: tuple[Path, ...], as_json: bool) -> None:
    """POPE scores of one answer file, per category.

    Accuracy, precision, recall, F1 and yes-ratio per category and overall (pooled). Answers
    pair with labels by (category, question_id); what does not pair is reported on stderr."""
    from .pope import format_pope_table, format_unpaired, score_pope_file

    report = score_pope_file(answers_path, label_paths)
    if not report.pairing.pairs:
        raise DataError(f"no answer of {answers_path} pairs with a label of "
                        f"{', '.join(map(str, label_paths))} (question ids or categories differ)")
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(format_pope_table(report))
    for line in format_unpaired(report.pairing):
        click.echo(f"warning: {line}", err=True)


@score.command("sweep")
@click.argument("answer_paths", metavar="ANSWERS...", type=_FILE, nargs=-1, required=True)
@_LABELS
@click.option("--plot", "plot_path", type=_FILE, default=None, help="Also write a PNG: F1 and accuracy vs tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def sweep(answer_paths: tuple[Path, ...], label_paths: tuple[Path, ...], plot_path: Path | None,
          as_json: bool) -> None:
    """POPE score against visual tokens, one file per budget.

    Overall POPE scores of several answer files of one question set (one per token budget),
    sorted by the mean number of visual tokens the model saw (metadata.visual_tokens)."""
    from .pope import format_unpaired
    from .sweep import format_sweep_table, plot_sweep, sweep_pope

    points = sweep_pope(answer_paths, label_paths)
    for point in points:
        if not point.report.pairing.pairs:
            raise DataError(f"no answer of {point.answers_path} pairs with a label")
    if plot_path is not None:
        plot_sweep(points, plot_path)
    if as_json:
        click.echo(json.dumps({"points": [p.to_dict() for p in points],
                               "plot": str(plot_path) if plot_path else None}))
    else:
        click.echo(format_sweep_table(points))
        if plot_path is not None:
            click.echo(f"plot: {plot_path}", err=True)
    for point in points:
        for line in format_unpaired(point.report.pairing):
            click.echo(f"warning: {point.answers_path}: {line}", err=True)
