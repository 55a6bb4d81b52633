"""``masktok score BENCH`` and ``masktok submission BENCH`` (registered in cli/__init__.py).

Each scorer prints its table, or with ``--json`` one object whose ``"score"`` is the number
the paper reports (scoring.BenchScore.to_dict); questions without an answer and answers of no
question are reported on stderr. Bad input (a missing or malformed file, labels of another
benchmark, answers of another question set) is a ``DataError``: one line, exit status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..schemas.errors import DataError, Group

_FILE = click.Path(dir_okay=False, path_type=Path)
_PATH = click.Path(path_type=Path)
_ANSWERS = click.option("--answers", "answers_path", type=_FILE, required=True, help="LLaVA answer jsonl.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")


@click.group("score", cls=Group)
def score() -> None:
    """Score LLaVA-format answer files with each benchmark's reference rule."""


def _report(result: Any, table: Callable[[Any], str], as_json: bool,
            warnings: Callable[[Any], list[str]] | None = None) -> None:
    click.echo(json.dumps(result.to_dict()) if as_json else table(result))
    for line in (warnings or type(result).warnings)(result):
        click.echo(f"warning: {line}", err=True)


@score.command("pope")
@_ANSWERS
@click.option("--labels", "label_paths", type=_FILE, multiple=True, required=True,
              help="POPE label file (coco_pope_<category>.json); repeat for each category.")
@click.option("--questions", "questions_path", type=_FILE, default=None,
              help="LLaVA's llava_pope_test.jsonl: pairs as eval_pope.py (the k-th question of a category "
                   "with the k-th label). Without it, answers pair by (metadata.category, question_id).")
@_JSON
def pope(answers_path: Path, label_paths: tuple[Path, ...], questions_path: Path | None, as_json: bool) -> None:
    """POPE: mean F1 over the categories (%), with accuracy, precision, recall, F1 and yes-ratio
    per category and pooled, as LLaVA-1.5's eval_pope.py."""
    from ..evaluate.pope import as_bench_score, format_pope_table, score_pope_file

    report = score_pope_file(answers_path, label_paths, questions_path)
    result = as_bench_score(report, answers_path)
    headline = "-" if result.score is None else f"{result.score:.2f}"
    _report(result, lambda s: f"{format_pope_table(report)}\nPOPE (mean F1 over the categories): {headline}",
            as_json)
    if questions_path is None and result.unpaired:
        click.echo("hint: LLaVA's own answers carry no category and their ids are not the labels' ids: "
                   "pass --questions llava_pope_test.jsonl to pair them as eval_pope.py does", err=True)


@score.command("mme")
@_ANSWERS
@click.option("--labels", "labels_path", type=_PATH, required=True,
              help="MME's ground truth: the eval tool's Your_Results/ folder or the benchmark release folder.")
@_JSON
def mme(answers_path: Path, labels_path: Path, as_json: bool) -> None:
    """MME: perception total (cognition beside it), acc and acc+ per subtask, as MME's
    eval_tool/calculation.py after LLaVA's convert_answer_to_mme.py."""
    from ..evaluate.mme import format_mme_table, score_mme

    _report(score_mme(answers_path, labels_path), format_mme_table, as_json)


@score.command("mmbench")
@_ANSWERS
@click.option("--labels", "labels_path", type=_FILE, required=True, help="MMBench's TSV with its answer column.")
@_JSON
def mmbench(answers_path: Path, labels_path: Path, as_json: bool) -> None:
    """MMBench: CircularEval accuracy (%), per category and l2-category; options extracted as
    VLMEvalKit's can_infer, no GPT fallback (unparsable answers count wrong)."""
    from ..evaluate.mmbench import format_mmbench_table, mmbench_warnings, score_mmbench

    _report(score_mmbench(answers_path, labels_path), format_mmbench_table, as_json, mmbench_warnings)


@score.command("sqa")
@_ANSWERS
@click.option("--questions", "questions_path", type=_FILE, required=True,
              help="LLaVA's ScienceQA file (llava_test_CQM-A.json): its answers are the labels.")
@_JSON
def sqa(answers_path: Path, questions_path: Path, as_json: bool) -> None:
    """ScienceQA: IMG accuracy (%) and the accuracy over all questions, with
    eval_science_qa.py's letter extraction."""
    from ..evaluate.scienceqa import format_scienceqa_table, score_scienceqa

    _report(score_scienceqa(answers_path, questions_path), format_scienceqa_table, as_json)


@score.command("gqa")
@_ANSWERS
@click.option("--labels", "labels_path", type=_FILE, required=True, help="GQA's testdev_balanced_questions.json.")
@_JSON
def gqa(answers_path: Path, labels_path: Path, as_json: bool) -> None:
    """GQA: accuracy (%) as GQA's eval.py after LLaVA's convert_gqa_for_eval.py."""
    from ..evaluate.gqa import format_gqa_table, score_gqa

    _report(score_gqa(answers_path, labels_path), format_gqa_table, as_json)


@score.command("textvqa")
@_ANSWERS
@click.option("--labels", "labels_path", type=_FILE, required=True, help="TextVQA's TextVQA_0.5.1_val.json.")
@_JSON
def textvqa(answers_path: Path, labels_path: Path, as_json: bool) -> None:
    """TextVQA: VQA accuracy (%) with m4c_evaluator.py's EvalAI normalisation, as eval_textvqa.py."""
    from ..evaluate.vqa import format_vqa_table, score_textvqa

    _report(score_textvqa(answers_path, labels_path), format_vqa_table, as_json)


@score.command("vqa")
@_ANSWERS
@click.option("--labels", "labels_path", type=_FILE, required=True,
              help="VQAv2 val annotations (v2_mscoco_val2014_annotations.json) or VizWiz's val.json.")
@click.option("--questions", "questions_path", type=_FILE, default=None,
              help="LLaVA's question file (VizWiz: maps question ids to image names).")
@_JSON
def vqa(answers_path: Path, labels_path: Path, questions_path: Path | None, as_json: bool) -> None:
    """VQAv2 or VizWiz on val: VQA accuracy (%) with the EvalAI answer normalisation."""
    from ..evaluate.vqa import format_vqa_table, score_vqa

    _report(score_vqa(answers_path, labels_path, questions_path), format_vqa_table, as_json)


def _named(values: tuple[str, ...], option: str, default: str | None) -> dict[str, list[Path]]:
    """``BENCH=PATH`` values by benchmark; a bare PATH belongs to ``default`` (the only one)."""
    out: dict[str, list[Path]] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            if default is None:
                raise DataError(f"{option} {value!r}: write BENCH=PATH when several benchmarks are swept")
            name, path = default, value
        out.setdefault(name, []).append(Path(path))
    return out


@score.command("sweep")
@click.argument("entries", metavar="BENCH=ANSWERS...", nargs=-1, required=True)
@click.option("--labels", "labels", multiple=True, metavar="BENCH=PATH",
              help="A benchmark's labels (repeat; POPE takes one per category).")
@click.option("--questions", "questions", multiple=True, metavar="BENCH=PATH",
              help="A benchmark's question file (sqa needs it; pope pairs through it).")
@click.option("--plot", "plot_path", type=_FILE, default=None,
              help="PNG of score against visual tokens (several benchmarks: <stem>-<bench>.png each).")
@_JSON
def sweep(entries: tuple[str, ...], labels: tuple[str, ...], questions: tuple[str, ...], plot_path: Path | None,
          as_json: bool) -> None:
    """The paper's Table 1: a row per token spec, a column per benchmark.

    Each entry is BENCH=FILE or BENCH=FOLDER (its *.jsonl: one file per budget, as masktok
    answer --out writes them); BENCH is one of vqa, gqa, sqa, textvqa, pope, mme, mmbench."""
    from ..evaluate.sweep import format_sweep_table, plot_sweep
    from ..evaluate.sweep import sweep as run

    parsed = [(name, path) for name, paths in _named(entries, "entry", None).items() for path in paths]
    only = parsed[0][0] if len({n for n, _ in parsed}) == 1 else None
    question_files = {name: paths[-1] for name, paths in _named(questions, "--questions", only).items()}
    points = run(parsed, _named(labels, "--labels", only), question_files)
    plots = plot_sweep(points, plot_path) if plot_path is not None else []
    if as_json:
        click.echo(json.dumps({"points": [p.to_dict() for p in points], "plots": [str(p) for p in plots]}))
    else:
        click.echo(format_sweep_table(points))
        for plot in plots:
            click.echo(f"plot: {plot}", err=True)
    for point in points:
        for line in point.result.warnings():
            click.echo(f"warning: {point.answers_path}: {line}", err=True)


@click.group("submission", cls=Group)
def submission() -> None:
    """Files for the benchmarks scored by a server (VQAv2, VizWiz, MMBench) or a GPT grader (MM-Vet)."""


@submission.command("vqav2")
@_ANSWERS
@click.option("--questions", "questions_path", type=_FILE, required=True,
              help="LLaVA's llava_vqav2_mscoco_test2015.jsonl (every test2015 question id).")
@click.option("--out", "out_path", type=_FILE, required=True, help="The JSON to upload to EvalAI.")
def vqav2(answers_path: Path, questions_path: Path, out_path: Path) -> None:
    """VQAv2 test-dev/test for EvalAI, as LLaVA's convert_vqav2_for_submission.py."""
    from ..evaluate.vqa import write_vqav2_submission

    written, missing = write_vqav2_submission(answers_path, questions_path, out_path)
    _written(out_path, written, missing, 0)


@submission.command("vizwiz")
@_ANSWERS
@click.option("--questions", "questions_path", type=_FILE, required=True, help="LLaVA's vizwiz llava_test.jsonl.")
@click.option("--out", "out_path", type=_FILE, required=True, help="The JSON to upload to EvalAI.")
def vizwiz(answers_path: Path, questions_path: Path, out_path: Path) -> None:
    """VizWiz test for EvalAI, as LLaVA's convert_vizwiz_for_submission.py."""
    from ..evaluate.vqa import write_vizwiz_submission

    written, missing = write_vizwiz_submission(answers_path, questions_path, out_path)
    _written(out_path, written, missing, 0)


@submission.command("mmbench")
@_ANSWERS
@click.option("--questions", "questions_path", type=_FILE, required=True, help="MMBench's question TSV.")
@click.option("--out", "out_path", type=_FILE, required=True, help="The .xlsx to upload to OpenCompass.")
def mmbench_submission(answers_path: Path, questions_path: Path, out_path: Path) -> None:
    """MMBench for the OpenCompass server, as LLaVA's convert_mmbench_for_submission.py."""
    from ..evaluate.mmbench import write_mmbench_submission

    written = write_mmbench_submission(answers_path, questions_path, out_path)
    _written(out_path, written.rows, len(written.missing), len(written.unpaired))


@submission.command("mmvet")
@_ANSWERS
@click.option("--out", "out_path", type=_FILE, required=True, help="The JSON for MM-Vet's GPT-4 grader.")
def mmvet(answers_path: Path, out_path: Path) -> None:
    """MM-Vet ({"v1_<id>": answer}) for its official GPT-4 grader, as LLaVA's convert_mmvet_for_eval.py."""
    from ..evaluate.mmvet import write_mmvet_submission

    _written(out_path, len(write_mmvet_submission(answers_path, out_path)), 0, 0)


def _written(out_path: Path, rows: int, missing: int, unpaired: int) -> None:
    """The one line a submission command prints; what lacks an answer goes to stderr."""
    click.echo(f"wrote {out_path} ({rows} questions)")
    if missing:
        click.echo(f"warning: {missing} question(s) without an answer, submitted empty", err=True)
    if unpaired:
        click.echo(f"warning: {unpaired} answer(s) of no question, left out", err=True)
