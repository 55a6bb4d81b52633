"""GQA testdev-balanced scores of LLaVA answer files, as LLaVA-1.5 gets them: its
``scripts/convert_gqa_for_eval.py`` (:func:`normalize_gqa_answer`) followed by GQA's official
``eval.py``.

From eval.py: accuracy over the balanced questions (exact match of the normalised answer with
the question's ``answer``), split into binary and open questions (open: structural type
"query"), accuracy per structural and per semantic type, and the distribution score (chi-square
of predicted vs gold answers per global group, /100, lower is better). Left out: validity and
plausibility (they need the choices file), consistency (the entailed questions of the
all-questions file) and grounding (scene graphs and attention maps); per-length and per-steps
accuracy are not reported. Unlike eval.py, which stops at a missing prediction, a balanced
question without an answer is counted wrong and reported; answers to questions that are not
balanced are ignored, as eval.py ignores them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from .benchmarks import Benchmark, Input
from .scoring import AnswerLine, BenchScore, load_json, format_rows, id_key, read_answer_file, require_pairs

# eval.py's names of the semantic types, for the table.
SEMANTIC_NAMES = {"attr": "attribute", "cat": "category", "global": "scene", "obj": "object", "rel": "relation"}


def normalize_gqa_answer(text: str) -> str:
    """An answer as LLaVA's convert_gqa_for_eval.py writes its prediction: trailing periods
    stripped, then lowercased ("Yes." -> "yes"; spaces and articles stay: "A dog" -> "a dog")."""
    return text.rstrip(".").lower()


def answer_kind(question: dict[str, Any]) -> str:
    """The kind eval.py gives a question: "open" for the structural type "query", else "binary"
    (verify, logical, choose, compare)."""
    return "open" if question["types"]["structural"] == "query" else "binary"


def balanced_questions(data: Any, path: Path) -> dict[str, dict[str, Any]]:
    """The balanced questions of a GQA questions file's content ({qid: {"answer", "types",
    "isBalanced", ...}}), by id. DataError for another kind of file or one without balanced questions."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: not GQA questions (expected {{question id: {{\"answer\", \"types\", "
                        "\"isBalanced\", ...}})")
    balanced = {}
    for qid, question in data.items():
        if not (isinstance(question, dict) and isinstance(question.get("answer"), str)
                and isinstance(question.get("types"), dict) and isinstance(question["types"].get("structural"), str)
                and "isBalanced" in question):
            raise DataError(f"{path}: question {qid!r} is not a GQA question (answer, types.structural, isBalanced)")
        if question["isBalanced"]:
            balanced[id_key(qid)] = question
    if not balanced:
        raise DataError(f"{path}: no balanced question")
    return balanced


def distribution_score(gold: dict[Any, dict[str, int]], predicted: dict[Any, dict[str, int]]) -> float | None:
    """eval.py's ``chiSquare(gold, predicted) / 100``: per group, sum over gold answers of
    (predicted count - gold count)^2 / gold count, averaged over groups weighted by their gold
    totals. None without any group (where eval.py divides by zero)."""
    weighted, total = 0.0, 0
    for group, counts in gold.items():
        score = sum(float(predicted.get(group, {}).get(ans, 0) - e) ** 2 / e for ans, e in counts.items())
        overall = sum(counts.values())
        weighted += score * overall
        total += overall
    return None if total == 0 else weighted / total / 100


def _pair(answers: list[AnswerLine], questions: dict[str, dict[str, Any]], all_ids: set[str],
          answers_path: Path) -> tuple[dict[str, AnswerLine], list[Any]]:
    """Answers by balanced question id, and those of no question. An answer to an unbalanced
    question (an id in ``all_ids`` only) is dropped; a second answer to one question is a DataError."""
    paired: dict[str, AnswerLine] = {}
    unpaired = []
    for answer in answers:
        key = id_key(answer.question_id)
        if key not in questions:
            if key not in all_ids:
                unpaired.append(answer.question_id)
            continue
        if key in paired:
            raise DataError(f"{answers_path}:{answer.number}: second answer to question "
                            f"{answer.question_id!r} (first on line {paired[key].number})")
        paired[key] = answer
    return paired, unpaired


def score_gqa(answers_path: Path, labels_path: Path) -> BenchScore:
    """GQA accuracy (%) over the balanced questions of ``labels_path`` (the official
    ``testdev_balanced_questions.json``), per the module docstring. parts: "binary", "open",
    "structural/<type>", "semantic/<type>" ({"accuracy": %, "n"}); extra: "distribution"."""
    raw = load_json(labels_path)
    questions = balanced_questions(raw, labels_path)
    paired, unpaired = _pair(read_answer_file(answers_path), questions, {id_key(q) for q in raw}, answers_path)
    require_pairs(len(paired), answers_path, str(labels_path))
    groups: dict[str, list[float]] = defaultdict(list)
    gold_dist: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    predicted_dist: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    accs, missing = [], []
    for qid, question in questions.items():
        answer = paired.get(qid)
        if answer is None:
            missing.append(qid)
        predicted = None if answer is None else normalize_gqa_answer(answer.text)
        acc = float(predicted == question["answer"])
        accs.append(acc)
        types = question["types"]
        names = [answer_kind(question), f"structural/{types['structural']}"]
        if isinstance(types.get("semantic"), str):
            names.append(f"semantic/{types['semantic']}")
        for name in names:
            groups[name].append(acc)
        global_group = (question.get("groups") or {}).get("global")
        if global_group is not None:
            gold_dist[global_group][question["answer"]] += 1
            if predicted is not None:
                predicted_dist[global_group][predicted] += 1
    rank = {"structural": 1, "semantic": 2}  # as eval.py prints them: binary, open, then the types
    order = sorted(groups, key=lambda name: (rank.get(name.partition("/")[0], 0), name))
    parts = {name: {"accuracy": 100 * sum(groups[name]) / len(groups[name]), "n": len(groups[name])}
             for name in order}
    return BenchScore("gqa", 100 * sum(accs) / len(accs), parts=parts, scored=len(accs), missing=missing,
                      unpaired=unpaired, extra={"distribution": distribution_score(gold_dist, predicted_dist)})


def format_gqa_table(score: BenchScore) -> str:
    """Accuracy overall, binary/open and per type (questions and accuracy in %), then the
    distribution score."""
    rows = [("questions", "n", "acc%"), ("gqa (all)", str(score.scored), _pct(score.score))]
    for name, part in score.parts.items():
        kind, _, short = name.partition("/")
        shown = f"{kind} {SEMANTIC_NAMES.get(short, short)}" if kind == "semantic" else name.replace("/", " ")
        rows.append((shown, str(part["n"]), _pct(part["accuracy"])))
    distribution = score.extra.get("distribution")
    rows.append(("distribution (lower is better)", "", "-" if distribution is None else f"{distribution:.2f}"))
    return format_rows(rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


ENTRIES = (
    Benchmark("gqa", "GQA", "GQA: accuracy (%) as GQA's eval.py after LLaVA's convert_gqa_for_eval.py.",
              lambda answers, labels, questions: score_gqa(answers, labels[0]), format_gqa_table,
              labels=Input("required", "GQA's testdev_balanced_questions.json.")),
)
