"""Scores against the number of visual tokens: the paper's Table 1 (a row per token budget,
a column per benchmark) and Figure 5 (a plot per benchmark of score against visual tokens).

Input: answer files of one or more benchmarks, one file per token budget and benchmark (as
``masktok answer --out answers/<bench> --tokens ... --tokens ...`` writes them). A file's
token count is the mean of its answers' ``metadata.visual_tokens`` (the tokens the model saw,
which varies with the number of objects in each image); its spec is ``metadata.tokens``.
The table's ``paper`` column names the paper's setting a spec is (its token count: 138 for
``cls,patch:36,obj:101:all``, 57, 42, 29, 15; trainer/visual/token_spec.py ``PAPER_SPECS``), "-" for
any other spec: ``cls,patch:36,obj:101`` (the filtered objects) is not the paper's 138.

Where a point's spec and benchmark match a figure the paper prints (evaluate/paper.py; the 7B
model's unless told otherwise), the point carries that figure, its table and the difference
(masktok's score minus the paper's), printed in a second table under the first.

Beside the scores, each row shows what its answers cost (efficiency.py): the LM's prefill
TFLOP per answer (2 x parameters x prompt tokens) and the questions/s measured by the run
that wrote the files (their ``<spec>.run.json``), "not recorded" without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError, TokenSpecError
from ..trainer.visual.token_spec import paper_budget
from .benchmarks import benchmarks, score_benchmark
from .efficiency import (NOT_RECORDED, RunRecord, lm_config, mean_prompt_tokens, prefill_parameters, prefill_tflop,
                         read_run_record)
from .paper import PaperFigure, paper_figure
from .scoring import UNANSWERED, BenchScore, format_rows, read_json_lines


@dataclass
class SweepPoint:
    """One answer file: its benchmark, token spec, mean visual tokens and score."""

    benchmark: str
    answers_path: Path
    spec: str
    visual_tokens: float
    result: BenchScore
    paper: PaperFigure | None = None  # the paper's figure for this spec and benchmark
    prompt_tokens: float | None = None  # mean metadata.prompt_tokens (None: not recorded)
    run: RunRecord | None = None  # OUT/<spec>.run.json of the run that wrote the file
    lm_parameters: int = 0  # the LM's parameters counted per prefilled token (efficiency.py)

    @property
    def prefill_tflop(self) -> float:
        """2 x N x T per answer: T the prompt tokens, or the visual tokens when not recorded."""
        return prefill_tflop(self.lm_parameters, self.prompt_tokens if self.prompt_tokens is not None
                             else self.visual_tokens)

    @property
    def difference(self) -> float | None:
        """masktok's score minus the paper's figure (None without either)."""
        if self.paper is None or self.result.score is None:
            return None
        return self.result.score - self.paper.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: benchmark, path, spec, tokens, the scorer's summary and the paper's figure."""
        paper = None if self.paper is None else {"figure": self.paper.value, "table": self.paper.table,
                                                 "difference": self.difference}
        return {"benchmark": self.benchmark, "answers": str(self.answers_path), "spec": self.spec,
                "visual_tokens": self.visual_tokens, **{k: v for k, v in self.result.to_dict(examples=0).items()
                                                         if k not in ("benchmark", "missing_examples",
                                                                      "unpaired_examples")},
                "paper": paper, "prefill_tflop": self.prefill_tflop,
                "prefill_tokens": "visual" if self.prompt_tokens is None else "prompt",
                "questions_per_s": None if self.run is None else self.run.questions_per_s,
                "run": None if self.run is None else asdict(self.run)}


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    metadata = row.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def mean_visual_tokens(rows: Sequence[tuple[int, dict[str, Any]]], path: Path) -> float:
    """Mean of ``metadata.visual_tokens`` over the rows the model answered (not the empty
    lines of ``metadata.unanswered``); DataError naming the file (and the first line) when the
    file has no answer or a line lacks a numeric count."""
    counts = []
    for number, row in rows:
        if UNANSWERED in _metadata(row):
            continue
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


def answer_files(path: Path) -> list[Path]:
    """A folder's ``*.jsonl`` (sorted), or the file itself."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(f"{path} holds no answer file (*.jsonl)")
        return files
    return [path]


def sweep(entries: Sequence[tuple[str, Path]], labels: dict[str, list[Path]],
          questions: dict[str, Path], paper_model: str = "7b", lm_parameters: int | None = None,
          settings: Mapping[str, Mapping[str, str]] | None = None) -> list[SweepPoint]:
    """Score every (benchmark, answer file or folder) entry with that benchmark's labels and
    question file, each beside the paper's figure of ``paper_model`` where it has one, its
    prompt tokens and run record (``lm_parameters``: efficiency.prefill_parameters of the LM,
    by default of the paper's LM of ``paper_model``;
    ``settings``: each benchmark's rule choices, benchmarks.score_benchmark's);
    points sorted by visual tokens (then spec, then benchmark)."""
    if lm_parameters is None:
        lm_parameters = prefill_parameters(lm_config(None, paper_model)[0])
    points = []
    for bench, path in entries:
        for file in answer_files(path):
            rows = read_json_lines(file)
            spec = token_spec_of(rows, file)
            result = score_benchmark(bench, file, labels.get(bench, []), questions.get(bench),
                                     (settings or {}).get(bench))
            figure = paper_figure(paper_model, _budget(spec), benchmarks()[bench].paper_column(result))
            points.append(SweepPoint(bench, file, spec, mean_visual_tokens(rows, file), result, figure,
                                     mean_prompt_tokens(rows), read_run_record(file), lm_parameters))
    return sorted(points, key=lambda p: (p.visual_tokens, p.spec, p.benchmark))


def format_score(value: float | None) -> str:
    """A headline score as the paper prints it: one decimal ("-" when undefined)."""
    return "-" if value is None else f"{value:.1f}"


def format_tokens(value: float) -> str:
    """A token count rounded to one decimal, without a trailing ".0" (135, 15.5)."""
    return f"{round(float(value), 1):g}"


def format_sweep_table(points: Sequence[SweepPoint]) -> str:
    """Table 1's layout: a row per token spec (its mean visual tokens over all its answers), a
    column per benchmark with the headline score; "-" where a spec has no file of that benchmark."""
    known = benchmarks()
    benches = [b for b in known if any(p.benchmark == b for p in points)]
    benches += sorted({p.benchmark for p in points} - set(benches))
    specs: dict[str, list[SweepPoint]] = {}
    for p in points:
        specs.setdefault(p.spec, []).append(p)
    order = sorted(specs, key=lambda s: (-_tokens(specs[s]), s))
    rows = [("tokens", "spec", "paper", *(known[b].title if b in known else b for b in benches), "TFLOP", "q/s")]
    for spec in order:
        by_bench = {p.benchmark: p for p in specs[spec]}
        rows.append((format_tokens(_tokens(specs[spec])), spec, _paper(spec),
                     *(format_score(by_bench[b].result.score) if b in by_bench else "-" for b in benches),
                     _tflop(specs[spec]), _rate(specs[spec])))
    table = format_rows(rows, left={1})
    if any(p.prompt_tokens is None for p in points):
        table += "\n* visual tokens only: the answers record no metadata.prompt_tokens"
    return table


def _tflop(points: Sequence[SweepPoint]) -> str:
    """The mean prefill TFLOP per answer of a spec's files; "*" when some count visual tokens only."""
    value = sum(p.prefill_tflop for p in points) / len(points)
    return f"{value:.2f}" + ("*" if any(p.prompt_tokens is None for p in points) else "")


def _rate(points: Sequence[SweepPoint]) -> str:
    """Questions/s of a spec's runs, over the files that have a run record: their questions over
    their seconds (the mean of the recorded rates where seconds are missing); "not recorded"
    when none has one."""
    runs = [p.run for p in points if p.run is not None]
    if not runs:
        return NOT_RECORDED
    seconds = sum(r.seconds for r in runs)
    if seconds > 0:
        return f"{sum(r.questions for r in runs) / seconds:.1f}"
    return f"{sum(r.questions_per_s for r in runs) / len(runs):.1f}"


def format_paper_table(points: Sequence[SweepPoint]) -> str | None:
    """The points that match a figure of the paper: masktok's score, the paper's, the
    difference and the table (None when no point matches)."""
    known = benchmarks()
    matched = [p for p in points if p.paper is not None]
    if not matched:
        return None
    rows = [("tokens", "spec", "benchmark", "masktok", "paper", "diff", "source")]
    for p in sorted(matched, key=lambda p: (-_budget(p.spec), list(known).index(p.benchmark))):
        diff = p.difference
        rows.append((str(_budget(p.spec)), p.spec, known[p.benchmark].paper_column(p.result),
                     format_score(p.result.score), format_score(p.paper.value),
                     "-" if diff is None else f"{diff:+.1f}", p.paper.table))
    return format_rows(rows, left={1, 2, 6})


def _budget(spec: str) -> int | None:
    """The paper's token count of ``spec`` (None: not one of the paper's settings)."""
    try:
        return paper_budget(spec)
    except TokenSpecError:  # a file stem that is no spec
        return None


def _paper(spec: str) -> str:
    """The paper's token count of ``spec`` ("-": not one of the paper's settings)."""
    budget = _budget(spec)
    return "-" if budget is None else str(budget)


def _tokens(points: Sequence[SweepPoint]) -> float:
    return sum(p.visual_tokens for p in points) / len(points)


def plot_paths(out_path: Path, benches: Sequence[str]) -> dict[str, Path]:
    """Where each benchmark's plot goes: ``out_path`` itself for one benchmark, else
    ``<stem>-<bench>.png`` beside it."""
    out_path = Path(out_path)
    if len(benches) == 1:
        return {benches[0]: out_path}
    return {b: out_path.with_name(f"{out_path.stem}-{b}.png") for b in benches}


def plot_sweep(points: Sequence[SweepPoint], out_path: Path) -> list[Path]:
    """One PNG per benchmark (:func:`plot_paths`): its score against visual tokens (log x axis,
    ticks at the points' token counts), each point labelled with its token spec."""
    benches = list(dict.fromkeys(p.benchmark for p in points))
    written = []
    for bench, path in plot_paths(out_path, benches).items():
        mine = [p for p in points if p.benchmark == bench and p.result.score is not None]
        if mine:
            written.append(_plot_one(mine, bench, path))
    return written


def _plot_one(points: Sequence[SweepPoint], bench: str, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    info = benchmarks().get(bench)
    xs = [p.visual_tokens for p in points]
    ys = [p.result.score for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        ax.plot(xs, ys, marker="o")
        for x, y, p in zip(xs, ys, points):
            ax.annotate(p.spec, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.set_xscale("log")
        ticks = sorted(set(xs))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, [format_tokens(t) for t in ticks])
        ax.set_xlim(ticks[0] / 1.3, ticks[-1] * 1.8)  # room for the last point's label
        ax.margins(y=0.12)
        ax.set_xlabel("visual tokens per image (log scale)")
        ax.set_ylabel(f"{info.title if info else bench} ({info.unit if info else 'score'})")
        ax.set_title(info.title if info else bench)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        out_path = Path(out_path)
        try:
            fig.savefig(out_path, format="png")
        except OSError as exc:
            raise DataError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out_path
