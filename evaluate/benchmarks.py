"""The scored benchmarks by name: what each needs besides the answers, and its scorer.

One entry per ``masktok score BENCH`` (and per column of ``masktok score sweep``). A scorer
takes the answer file, the label paths and the question file, and returns a
scoring.BenchScore whose ``score`` is the number the paper reports for the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..schemas.errors import DataError
from .scoring import BenchScore


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # the column header of the paper's Table 1
    labels: str  # "one", "many" or "none": how many --labels paths it takes
    questions: str  # "required", "optional" or "none": whether it reads the question file
    score: Callable[[Path, Sequence[Path], Path | None], BenchScore]
    unit: str = "%"


def _pope(answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    from .pope import score_pope
    return score_pope(answers, labels, questions)


def _mme(answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    from .mme import score_mme
    return score_mme(answers, labels[0])


def _mmbench(answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    from .mmbench import score_mmbench
    return score_mmbench(answers, labels[0])


def _sqa(answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    from .scienceqa import score_scienceqa
    return score_scienceqa(answers, questions)


def _gqa(answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    from .gqa import score_gqa
    return score_gqa(answers, labels[0])


def _textvqa(answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    from .vqa import score_textvqa
    return score_textvqa(answers, labels[0])


def _vqa(answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    from .vqa import score_vqa
    return score_vqa(answers, labels[0], questions)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("vqa", "VQA", "one", "optional", _vqa),
    Benchmark("gqa", "GQA", "one", "none", _gqa),
    Benchmark("sqa", "SQA-IMG", "none", "required", _sqa),
    Benchmark("textvqa", "TextVQA", "one", "none", _textvqa),
    Benchmark("pope", "POPE", "many", "optional", _pope),
    Benchmark("mme", "MME", "one", "none", _mme, unit="points"),
    Benchmark("mmbench", "MMBench", "one", "none", _mmbench),
)}


def score_benchmark(name: str, answers: Path, labels: Sequence[Path], questions: Path | None) -> BenchScore:
    """Score ``answers`` with benchmark ``name``; DataError when its inputs are incomplete."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}: one of {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if bench.labels != "none" and not labels:
        raise DataError(f"{name} needs its labels (--labels {name}=PATH)")
    if bench.labels == "one" and len(labels) > 1:
        raise DataError(f"{name} takes one labels path, got {len(labels)}")
    if bench.questions == "required" and questions is None:
        raise DataError(f"{name} needs its question file (--questions {name}=PATH)")
    return bench.score(Path(answers), [Path(p) for p in labels], None if questions is None else Path(questions))
