"""``masktok score BENCH`` and ``masktok submission NAME`` (registered in cli/__init__.py),
made from the benchmark registry (evaluate/benchmarks.py): one command per registered
benchmark or upload, with the options its entry declares, and ``score sweep`` over all of them.
Nothing here names a benchmark.

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

from ..schemas.errors import Command, DataError, Group

_FILE = click.Path(dir_okay=False, path_type=Path)
_PATH = click.Path(path_type=Path)


class RegistryGroup(Group):
    """A click group whose commands are made from the registry when asked for, so a benchmark
    registered in evaluate/benchmarks.py is a command with no edit here."""

    def __init__(self, *args: Any, entries: Callable[[], dict[str, Any]], make: Callable[[Any], click.Command],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entries, self.make = entries, make

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.entries()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        fixed = super().get_command(ctx, name)
        if fixed is not None:
            return fixed
        entry = self.entries().get(name)
        return None if entry is None else self.make(entry)


def _answers() -> click.Option:
    return click.Option(["--answers", "answers_path"], type=_FILE, required=True, help="LLaVA answer jsonl.")


def _input(flag: str, dest: str, spec: Any) -> list[click.Option]:
    """The option of a benchmarks.Input, none when the entry does not take it."""
    if spec.need == "none":
        return []
    return [click.Option([flag, dest], type=_PATH if spec.folder else _FILE, multiple=spec.many,
                         required=spec.need == "required", help=spec.help)]


def _settings(settings: Any) -> list[click.Option]:
    """The options of benchmarks.Setting s."""
    return [click.Option([s.flag, s.dest], type=click.Choice(s.choices), default=s.default, show_default=True,
                         help=s.help) for s in settings]


def score_command(bench: Any) -> click.Command:
    """``masktok score NAME`` for a benchmarks.Benchmark."""

    def run(answers_path: Path, as_json: bool, label_paths: Any = None, questions_path: Path | None = None,
            **chosen: str) -> None:
        from ..evaluate.benchmarks import score_benchmark

        labels = list(label_paths) if isinstance(label_paths, tuple) else [] if label_paths is None else [label_paths]
        settings = {s.name: chosen[s.dest] for s in bench.settings}
        result = score_benchmark(bench.name, answers_path, labels, questions_path, settings)
        click.echo(json.dumps(result.to_dict()) if as_json else bench.table(result))
        for line in bench.warnings(result):
            click.echo(f"warning: {line}", err=True)
        for line in bench.notes(result, questions_path):
            click.echo(line, err=True)

    params = [_answers(), *_input("--labels", "label_paths", bench.labels),
              *_input("--questions", "questions_path", bench.questions), *_settings(bench.settings),
              click.Option(["--json", "as_json"], is_flag=True, help="Print one JSON object instead of the table.")]
    return Command(bench.name, params=params, callback=run, help=bench.help)


def submission_command(upload: Any) -> click.Command:
    """``masktok submission NAME`` for a benchmarks.Submission."""

    def run(answers_path: Path, out_path: Path, questions_path: Path | None = None,
            split_path: Path | None = None) -> None:
        split = () if upload.split.need == "none" else (split_path,)
        rows, missing, unpaired = upload.write(answers_path, questions_path, out_path, *split)
        click.echo(f"wrote {out_path} ({rows} questions)")
        if missing:
            where = "" if split_path is None else f" of {split_path.name}"
            click.echo(f"warning: {missing} question(s){where} without an answer, {upload.missing}", err=True)
        if unpaired:
            click.echo(f"warning: {unpaired} answer(s) of no question, left out", err=True)

    params = [_answers(), *_input("--questions", "questions_path", upload.questions),
              *_input("--split", "split_path", upload.split),
              click.Option(["--out", "out_path"], type=_FILE, required=True, help=upload.out_help)]
    return Command(upload.name, params=params, callback=run, help=upload.help)


def _benchmarks() -> dict[str, Any]:
    from ..evaluate.benchmarks import benchmarks

    return benchmarks()


def _submissions() -> dict[str, Any]:
    from ..evaluate.benchmarks import registered

    return registered().submissions


@click.group("score", cls=RegistryGroup, entries=_benchmarks, make=score_command)
def score() -> None:
    """Score LLaVA-format answer files with each benchmark's reference rule."""


@click.group("submission", cls=RegistryGroup, entries=_submissions, make=submission_command)
def submission() -> None:
    """Files for the benchmarks scored by a server (VQAv2, VizWiz, MMBench) or a GPT grader (MM-Vet)."""


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


class SweepCommand(Command):
    """``score sweep``, its help naming the registered benchmarks (``{names}`` in the text), with
    the rule options (benchmarks.Setting) of every registered benchmark."""

    settings_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self.settings_added:  # made from the registry when first asked, as RegistryGroup's commands
            settings = {s.flag: s for bench in _benchmarks().values() for s in bench.settings}
            self.params[-1:-1] = _settings(settings.values())  # before --json
            self.settings_added = True
        return super().get_params(ctx)

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.help = (self.help or "").replace("{names}", ", ".join(_benchmarks()))
        super().format_help_text(ctx, formatter)


@score.command("sweep", cls=SweepCommand)
@click.argument("entries", metavar="BENCH=ANSWERS...", nargs=-1, required=True)
@click.option("--labels", "labels", multiple=True, metavar="BENCH=PATH",
              help="A benchmark's labels (repeat; POPE takes one per category).")
@click.option("--questions", "questions", multiple=True, metavar="BENCH=PATH",
              help="A benchmark's question file (sqa needs it; pope pairs through it).")
@click.option("--plot", "plot_path", type=_FILE, default=None,
              help="PNG of score against visual tokens (several benchmarks: <stem>-<bench>.png each).")
@click.option("--paper-model", type=click.Choice(["7b", "13b"]), default="7b", show_default=True,
              help="Whose figures of the paper to show beside the scores: Mask-LLaVA-7B (Table 1, Tables 9 "
                   "and 10) or -13B (Table 4).")
@click.option("--lm-config", type=_PATH, default=None,
              help="The LM's config.json (or a folder holding it) for the TFLOP column; default: the paper's LM "
                   "of --paper-model (Vicuna v1.5).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def sweep(entries: tuple[str, ...], labels: tuple[str, ...], questions: tuple[str, ...], plot_path: Path | None,
          paper_model: str, lm_config: Path | None, as_json: bool, **chosen: str) -> None:
    """The paper's Table 1: a row per token spec, a column per benchmark; under it, for every
    spec and benchmark the paper prints a figure for, that figure and the difference. Each row
    also shows the LM's prefill TFLOP per answer (2 x parameters x prompt tokens) and the
    questions/s of the runs that wrote its files (their <spec>.run.json).

    Each entry is BENCH=FILE or BENCH=FOLDER (its *.jsonl: one file per budget, as masktok
    answer --out writes them); BENCH is one of {names}."""
    from ..evaluate.efficiency import lm_config as read_lm_config
    from ..evaluate.efficiency import prefill_parameters
    from ..evaluate.sweep import format_paper_table, format_sweep_table, plot_sweep
    from ..evaluate.sweep import sweep as run

    parsed = [(name, path) for name, paths in _named(entries, "entry", None).items() for path in paths]
    only = parsed[0][0] if len({n for n, _ in parsed}) == 1 else None
    question_files = {name: paths[-1] for name, paths in _named(questions, "--questions", only).items()}
    config, lm_name = read_lm_config(lm_config, paper_model)
    parameters = prefill_parameters(config)
    known = _benchmarks()
    settings = {name: {s.name: chosen[s.dest] for s in bench.settings} for name, bench in known.items()}
    points = run(parsed, _named(labels, "--labels", only), question_files, paper_model, parameters, settings)
    plots = plot_sweep(points, plot_path) if plot_path is not None else []
    if as_json:
        click.echo(json.dumps({"points": [p.to_dict() for p in points], "plots": [str(p) for p in plots],
                               "lm": {"config": lm_name, "prefill_parameters": parameters}}))
    else:
        click.echo(format_sweep_table(points))
        click.echo(f"TFLOP: the LM's prefill per answer, 2 x {parameters / 1e9:.2f}e9 parameters ({lm_name}) "
                   "x prompt tokens; q/s: measured by the run (<spec>.run.json)")
        swept = dict.fromkeys(p.benchmark for p in points)  # registered, all of them (score_benchmark's check)
        rules = [f"{s.flag} {chosen[s.dest]}" for name in swept for s in known[name].settings]
        if rules:
            click.echo(f"rules: {', '.join(rules)}")
        if (paper := format_paper_table(points)) is not None:
            click.echo(f"\nthe paper's figures (Mask-LLaVA-{paper_model.upper()}); diff = masktok - paper\n{paper}")
        for plot in plots:
            click.echo(f"plot: {plot}", err=True)
    for point in points:
        for line in known[point.benchmark].warnings(point.result):
            click.echo(f"warning: {point.answers_path}: {line}", err=True)
