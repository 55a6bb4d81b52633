"""POPE scores of LLaVA-style answer files, equal to LLaVA-1.5's ``llava/eval/eval_pope.py``.

An answer's text is read as yes/no the way LLaVA-1.5 does it (:func:`normalize_pope_answer`);
"yes" is the positive class. The reported POPE number is the mean F1 over the categories.

Pairing. With LLaVA's question file (``--questions llava_pope_test.jsonl``) the rule is
eval_pope.py's: the k-th question of a category answers the k-th label of that category's
label file (the question file's ids are the label ids + 10,000,000 for random and + 20,000,000
for popular, and LLaVA's answers carry no category). Unlike eval_pope.py, each pair is checked
(same image, the label's question at the start of the question's text), answers find their
question by id and prompt (scoring.pair_with_questions), so a missing answer shifts nothing.
Without a question file, answers and labels pair by (category, question_id), the category
from masktok's ``metadata.category``. Whatever does not pair is reported, never silently
dropped; a label without an answer counts as a wrong prediction. Overall scores pool all
items of all categories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from .benchmarks import Benchmark, Input
from .scoring import BenchScore, format_rows, pair_with_questions, percent, read_answer_file, read_json_lines

POPE_FILE_PREFIX = "coco_pope_"


def normalize_pope_answer(text: str) -> str:
    """Read a free-form answer as "yes" or "no", like LLaVA-1.5's eval_pope.py: only the text
    before the first '.', commas dropped, split on single spaces; "no" if one of the words is
    'No', 'not' or 'no', else "yes" (so "Nope" and "" are "yes")."""
    first_sentence = text.split(".", 1)[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(word in ("No", "not", "no") for word in words) else "yes"


@dataclass(frozen=True)
class PopeLabel:
    """One ground-truth line: its category, question id and "yes"/"no" label (and, as POPE's
    files have them, its image and question)."""

    category: str
    question_id: Any
    label: str
    image: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class PopeScores:
    """Confusion counts and metrics of paired items (positive = "yes").

    A metric is None where its denominator is zero, i.e. exactly where LLaVA's eval_pope.py
    would raise ZeroDivisionError: accuracy and yes_ratio when n == 0, precision when
    TP + FP == 0, recall when TP + FN == 0, f1 when precision or recall is None or both are 0.
    Metrics are fractions in [0, 1].
    """

    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    yes_ratio: float | None


def score_counts(tp: int, fp: int, tn: int, fn: int) -> PopeScores:
    """Metrics from confusion counts, computed with LLaVA's formulas (None: see PopeScores)."""
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None and precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    return PopeScores(n=n, tp=tp, fp=fp, tn=tn, fn=fn,
                      accuracy=(tp + tn) / n if n else None,
                      precision=precision, recall=recall, f1=f1,
                      yes_ratio=(tp + fp) / n if n else None)


def score_predictions(pairs: Iterable[tuple[str, str]]) -> PopeScores:
    """Scores of (predicted, label) pairs, each "yes" or "no"."""
    counts = Counter(pairs)
    return score_counts(tp=counts[("yes", "yes")], fp=counts[("yes", "no")],
                        tn=counts[("no", "no")], fn=counts[("no", "yes")])


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line; DataError naming file and line if unreadable."""
    rows = read_json_lines(path)
    for number, row in rows:
        if not isinstance(row, dict) or "question_id" not in row:
            raise DataError(f"{path}:{number}: expected a JSON object with a question_id")
    return rows


def category_from_label_file(path: Path) -> str:
    """A label file's category: <cat> of coco_pope_<cat>.json (as LLaVA derives it), else the stem."""
    name = Path(path).name
    if name.startswith(POPE_FILE_PREFIX) and name.endswith(".json") and len(name) > len(POPE_FILE_PREFIX) + 5:
        return name[len(POPE_FILE_PREFIX):-len(".json")]
    return Path(path).stem


def load_pope_labels(paths: Sequence[Path]) -> list[PopeLabel]:
    """All label lines of the given files; a line's category is its ``category`` field, else
    the file's (:func:`category_from_label_file`). DataError for a label other than "yes"/"no"
    or a (category, question_id) given twice."""
    labels: list[PopeLabel] = []
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        file_category = category_from_label_file(path)
        for number, row in read_jsonl(path):
            label = row.get("label")
            if label not in ("yes", "no"):
                raise DataError(f'{path}:{number}: label must be "yes" or "no", got {label!r}')
            category = str(row.get("category") or file_category)
            key = (category, str(row["question_id"]))
            if key in seen:
                raise DataError(f"{path}:{number}: question {row['question_id']!r} of category "
                                f"{category!r} is labelled twice (also {seen[key]})")
            seen[key] = f"{path}:{number}"
            labels.append(PopeLabel(category, row["question_id"], label, row.get("image"), row.get("text")))
    return labels


@dataclass
class PopePairing:
    """Answers matched to labels: (category, predicted, label) triples and what did not pair."""

    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    missing: list[PopeLabel] = field(default_factory=list)  # labels without an answer: scored wrong
    answers_without_label: list[tuple[str | None, Any]] = field(default_factory=list)
    ambiguous_answers: list[Any] = field(default_factory=list)

    @property
    def labels_without_answer(self) -> list[tuple[str, Any]]:
        return [(lab.category, lab.question_id) for lab in self.missing]

    def scored(self) -> list[tuple[str, str, str]]:
        """(category, predicted, label) of every label: the pairs, and each missing answer
        as the wrong prediction."""
        return self.pairs + [(lab.category, "no" if lab.label == "yes" else "yes", lab.label) for lab in self.missing]


def pair_by_questions(answers: Sequence[Any], questions: Sequence[Any], labels: Sequence[PopeLabel],
                      questions_path: Path | str = "questions") -> PopePairing:
    """eval_pope.py's pairing, checked (module docstring): answers (scoring.AnswerLine) to
    their question lines, the k-th question of a category to the k-th label of that category.
    DataError when a label category has another number of questions, or a pair's image or
    question differs (labels of another POPE split or another question file)."""
    answer_of, unpaired = pair_with_questions(answers, questions)
    pairing = PopePairing(answers_without_label=[(None, a.question_id) for a in unpaired])
    by_category: dict[str, list[PopeLabel]] = {}
    for lab in labels:
        by_category.setdefault(lab.category, []).append(lab)
    for category, category_labels in by_category.items():
        asked = [q for q in questions if q.category == category]
        if len(asked) != len(category_labels):
            raise DataError(f"{questions_path} has {len(asked)} questions of category {category!r}, its "
                            f"labels {len(category_labels)}: labels of another POPE split or question file")
        for k, (q, lab) in enumerate(zip(asked, category_labels)):
            if (lab.image is not None and lab.image != q.image) or (lab.text and not q.text.startswith(lab.text)):
                raise DataError(f"question {k + 1} of category {category!r} ({questions_path}, question_id "
                                f"{q.question_id!r}) is not label {lab.question_id!r}'s ({lab.image}: {lab.text!r})")
            if (a := answer_of.get(q.line)) is None:
                pairing.missing.append(lab)
            else:
                pairing.pairs.append((category, normalize_pope_answer(a.text), lab.label))
    category_of = {q.line: q.category for q in questions}
    pairing.answers_without_label += [(category_of[line], a.question_id) for line, a in answer_of.items()
                                      if category_of[line] not in by_category]
    return pairing


def pair_answers(answers: Sequence[tuple[int, dict[str, Any]]], labels: Sequence[PopeLabel],
                 answers_path: Path | str = "answers") -> PopePairing:
    """Pair (line number, answer) rows with labels by (category, question_id). An answer's
    category is ``metadata.category``; without one, it takes the only label with its
    question_id, or is ambiguous when several categories have that id. DataError when two
    answers land on the same label or an answer has no text."""
    by_key = {(lab.category, str(lab.question_id)): lab for lab in labels}
    categories_of_id: dict[str, list[str]] = {}
    for lab in labels:
        categories_of_id.setdefault(str(lab.question_id), []).append(lab.category)
    pairing = PopePairing()
    answered: dict[tuple[str, str], int] = {}
    for number, answer in answers:
        qid = answer["question_id"]
        if not isinstance(answer.get("text"), str):
            raise DataError(f"{answers_path}:{number}: answer has no text")
        metadata = answer.get("metadata") if isinstance(answer.get("metadata"), dict) else {}
        category = metadata.get("category")
        if category is None:
            candidates = categories_of_id.get(str(qid), [])
            if len(candidates) > 1:
                pairing.ambiguous_answers.append(qid)
                continue
            category = candidates[0] if candidates else None
        key = (str(category), str(qid))
        if category is None or key not in by_key:
            pairing.answers_without_label.append((category, qid))
            continue
        if key in answered:
            raise DataError(f"{answers_path}:{number}: second answer to question {qid!r} of "
                            f"category {category!r} (first on line {answered[key]})")
        answered[key] = number
        pairing.pairs.append((key[0], normalize_pope_answer(answer["text"]), by_key[key].label))
    pairing.missing = [lab for lab in labels if (lab.category, str(lab.question_id)) not in answered]
    return pairing


@dataclass
class PopeReport:
    """Scores per category (sorted by name) and overall, plus the pairing's leftovers."""

    per_category: dict[str, PopeScores]
    overall: PopeScores
    pairing: PopePairing


def score_pairing(pairing: PopePairing) -> PopeReport:
    """Per-category and pooled overall scores of a pairing."""
    scored = pairing.scored()
    categories = sorted({category for category, _, _ in scored})
    per_category = {c: score_predictions((p, lab) for cat, p, lab in scored if cat == c) for c in categories}
    overall = score_predictions((p, lab) for _, p, lab in scored)
    return PopeReport(per_category, overall, pairing)


def score_pope_file(answers_path: Path, label_paths: Sequence[Path],
                    questions_path: Path | None = None) -> PopeReport:
    """Score one answer jsonl against POPE label files, paired through LLaVA's question file
    when one is given (see the module docstring)."""
    labels = load_pope_labels(label_paths)
    if questions_path is None:
        return score_pairing(pair_answers(read_jsonl(answers_path), labels, answers_path))
    from .questions import read_question_file

    questions = read_question_file(questions_path).questions
    return score_pairing(pair_by_questions(read_answer_file(answers_path), questions, labels, questions_path))


def mean_f1(report: PopeReport) -> float | None:
    """The reported POPE number: the mean of the categories' F1, in % (None if one is undefined)."""
    f1s = [s.f1 for s in report.per_category.values()]
    return None if not f1s or None in f1s else 100 * sum(f1s) / len(f1s)


def score_pope(answers_path: Path, label_paths: Sequence[Path], questions_path: Path | None = None) -> BenchScore:
    """:func:`score_pope_file` as a BenchScore (:func:`as_bench_score`)."""
    return as_bench_score(score_pope_file(answers_path, label_paths, questions_path), answers_path)


def as_bench_score(report: PopeReport, answers_path: Path | str) -> BenchScore:
    """``score`` the mean F1 (%), parts per category and pooled, ``missing`` the labels without
    an answer, ``unpaired`` the answers of no label; DataError when nothing paired."""
    pairing = report.pairing
    if not pairing.pairs:
        raise DataError(f"no answer of {answers_path} pairs with a POPE label (question ids or categories "
                        "differ: an answer file of another question set, or labels of another benchmark?)")
    return BenchScore("pope", mean_f1(report),
                      parts={"per_category": {c: asdict(s) for c, s in report.per_category.items()},
                             "overall": asdict(report.overall)},
                      scored=report.overall.n, missing=list(pairing.labels_without_answer),
                      unpaired=list(pairing.answers_without_label) + list(pairing.ambiguous_answers))


def format_pope_table(report: PopeReport) -> str:
    """Category rows and an overall row: n, counts and metrics in %."""
    header = ("category", "n", "TP", "FP", "TN", "FN", "acc%", "prec%", "rec%", "F1%", "yes%")
    rows = [header]
    for name, s in [*report.per_category.items(), ("overall", report.overall)]:
        rows.append((name, str(s.n), str(s.tp), str(s.fp), str(s.tn), str(s.fn), percent(s.accuracy),
                     percent(s.precision), percent(s.recall), percent(s.f1), percent(s.yes_ratio)))
    return format_rows(rows)


def pope_table(result: BenchScore) -> str:
    """:func:`format_pope_table` of a POPE BenchScore (its parts), and the headline line."""
    scores = {name: PopeScores(**s) for name, s in result.parts["per_category"].items()}
    report = PopeReport(scores, PopeScores(**result.parts["overall"]), PopePairing())
    headline = "-" if result.score is None else f"{result.score:.2f}"
    return f"{format_pope_table(report)}\nPOPE (mean F1 over the categories): {headline}"


def _pairing_hint(result: BenchScore, questions_path: Path | None) -> list[str]:
    if questions_path is None and result.unpaired:
        return ["hint: LLaVA's own answers carry no category and their ids are not the labels' ids: "
                "pass --questions llava_pope_test.jsonl to pair them as eval_pope.py does"]
    return []


ENTRIES = (
    Benchmark("pope", "POPE", "POPE: mean F1 over the categories (%), with accuracy, precision, recall, F1 and "
                              "yes-ratio per category and pooled, as LLaVA-1.5's eval_pope.py.",
              score_pope, pope_table,
              labels=Input("required", "POPE label file (coco_pope_<category>.json); repeat for each category.",
                           many=True),
              questions=Input("optional", "LLaVA's llava_pope_test.jsonl: pairs as eval_pope.py (the k-th question "
                                          "of a category with the k-th label). Without it, answers pair by "
                                          "(metadata.category, question_id)."),
              notes=_pairing_hint),
)
