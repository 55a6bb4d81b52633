"""The benchmark registry: one line per benchmark module, and what a module declares.

A benchmark module (pope.py, mme.py, ...) holds everything of its benchmark: how its question
file is read and prompted (a :class:`QuestionFormat`, where LLaVA's generic JSON Lines reader
in questions.py does not do), its answer rule and scorer (a :class:`Benchmark`: ``masktok
score NAME`` and a column of ``masktok score sweep``) and its server uploads (a
:class:`Submission`: ``masktok submission NAME``). It lists them in ``ENTRIES``.
:data:`REGISTRY` names the modules; the commands (cli/score.py), the sweep (sweep.py) and the
question reader of ``masktok answer`` (questions.py) are made from it and name no benchmark
(docs/eval.md, "Adding a benchmark").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..schemas.errors import DataError
from .scoring import BenchScore, count_unanswered

if TYPE_CHECKING:
    from .questions import Question

#: The benchmark modules of this package, in the paper's Table 1 order (the sweep's columns).
REGISTRY: tuple[str, ...] = ("vqa", "gqa", "scienceqa", "textvqa", "pope", "mme", "mmbench", "mmvet")


@dataclass(frozen=True)
class Input:
    """A file a scorer or an upload takes besides the answers (``--labels``, ``--questions``)."""

    need: str = "none"  # "required", "optional" or "none"
    help: str = ""
    many: bool = False  # repeatable (POPE: one label file per category)
    folder: bool = False  # a folder as well as a file (MME's ground-truth folder)


@dataclass(frozen=True)
class Setting:
    """A choice of rule a scorer offers: ``--FLAG`` of ``masktok score NAME`` and of ``score
    sweep``; the scorer receives it as the keyword ``name``."""

    flag: str  # "--mmbench-rules"
    name: str  # the scorer's keyword: "rules"
    choices: tuple[str, ...]
    default: str
    help: str = ""

    @property
    def dest(self) -> str:
        """The click parameter name of ``flag`` ("--mmbench-rules" -> "mmbench_rules")."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Benchmark:
    """A scored benchmark: ``score(answers, labels, questions, **settings)`` returns the
    scoring.BenchScore whose ``score`` is the number the paper reports; ``table`` prints it."""

    name: str
    title: str  # the column header of the paper's Table 1
    help: str  # the help of `masktok score NAME`
    score: Callable[..., BenchScore]
    table: Callable[[BenchScore], str]
    labels: Input = Input()
    questions: Input = Input()
    unit: str = "%"
    warnings: Callable[[BenchScore], list[str]] = BenchScore.warnings
    #: more lines for stderr after the warnings (a hint), from the result and --questions
    notes: Callable[[BenchScore, Path | None], list[str]] = lambda result, questions: []
    #: the result's column in the paper's tables (evaluate/paper.py); None: the benchmark's name
    paper_key: Callable[[BenchScore], str] | None = None
    #: rule choices, passed to ``score`` as keywords (``Setting.name``)
    settings: tuple[Setting, ...] = ()

    def paper_column(self, result: BenchScore) -> str:
        """Which of the paper's benchmarks ``result`` is (evaluate/paper.py's keys)."""
        return self.name if self.paper_key is None else self.paper_key(result)


@dataclass(frozen=True)
class Submission:
    """A server-scored upload: ``write(answers, questions, out)`` (``write(answers, questions,
    out, split)`` when it takes ``--split``) returns (rows written, questions without an answer,
    answers of no question). ``missing``: what becomes of a question without an answer, the
    end of the warning line."""

    name: str
    help: str
    out_help: str
    write: Callable[..., tuple[int, int, int]]
    questions: Input = Input()
    #: the question file of the split uploaded, where it is a subset of ``questions``: the
    #: questions that need an answer (VQAv2 test-dev among test2015)
    split: Input = Input()
    missing: str = "submitted empty"


@dataclass(frozen=True)
class QuestionFormat:
    """A question file a benchmark reads itself: ``claims(path)`` says it is one, ``read(path,
    lang)`` gives its questions in file order; ``max_new_tokens`` is LLaVA-1.5's for it."""

    kind: str
    max_new_tokens: int
    claims: Callable[[Path], bool]
    read: Callable[[Path, str | None], "list[Question]"]


@dataclass(frozen=True)
class Registered:
    """Everything the registry's modules declare, by kind, in registry order."""

    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    submissions: dict[str, Submission] = field(default_factory=dict)
    formats: list[QuestionFormat] = field(default_factory=list)


def registered(modules: Sequence[str] | None = None) -> Registered:
    """Import the registry's modules (names relative to this package) and gather their ENTRIES."""
    out = Registered()
    for name in REGISTRY if modules is None else modules:
        for entry in importlib.import_module(f".{name}", __package__).ENTRIES:
            if isinstance(entry, Benchmark):
                out.benchmarks[entry.name] = entry
            elif isinstance(entry, Submission):
                out.submissions[entry.name] = entry
            elif isinstance(entry, QuestionFormat):
                out.formats.append(entry)
            else:
                raise TypeError(f"{name}.ENTRIES holds {entry!r}: not a Benchmark, Submission or QuestionFormat")
    return out


def benchmarks() -> dict[str, Benchmark]:
    """The scored benchmarks by name, in registry order."""
    return registered().benchmarks


def score_benchmark(name: str, answers: Path, labels: Sequence[Path], questions: Path | None,
                    settings: Mapping[str, str] | None = None) -> BenchScore:
    """Score ``answers`` with benchmark ``name`` (with the count of its empty, unanswered lines);
    ``settings``: choices of the benchmark's :class:`Setting` s by name (the defaults for the
    others). DataError when its inputs are incomplete or a setting is unknown."""
    known = benchmarks()
    if name not in known:
        raise DataError(f"unknown benchmark {name!r}: one of {', '.join(known)}")
    bench = known[name]
    if bench.labels.need != "none" and not labels:
        raise DataError(f"{name} needs its labels (--labels {name}=PATH)")
    if not bench.labels.many and len(labels) > 1:
        raise DataError(f"{name} takes one labels path, got {len(labels)}")
    if bench.questions.need == "required" and questions is None:
        raise DataError(f"{name} needs its question file (--questions {name}=PATH)")
    chosen = {}
    for setting in bench.settings:
        value = (settings or {}).get(setting.name) or setting.default
        if value not in setting.choices:
            raise DataError(f"{setting.flag} {value!r}: one of {', '.join(setting.choices)}")
        chosen[setting.name] = value
    result = bench.score(Path(answers), [Path(p) for p in labels], None if questions is None else Path(questions),
                         **chosen)
    result.unanswered = count_unanswered(Path(answers))
    return result

