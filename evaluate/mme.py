"""MME scores of LLaVA-style answer files, equal to LLaVA-1.5's MME pipeline: its
``convert_answer_to_mme.py`` (which answer is which ground-truth question) followed by the
official MME ``eval_tool/calculation.py`` (acc, acc+ and the score of each subtask).

An answer names its ground truth by (subtask, label file, question): the subtask and file
come from its ``question_id`` ("<subtask>/<image>", the file being the image name before its
first '.' plus ".txt"), the question from its ``prompt`` (:func:`question_candidates`). A
subtask's score is acc + acc+ in percent, where acc is the share of its questions answered
right and acc+ the share of its images with both questions answered right; perception (the
paper's headline MME number) and cognition are sums of subtask scores.

Unlike calculation.py, which forms acc+ pairs from consecutive lines of a results file,
questions are grouped by image, so a missing answer cannot shift the pairs; a question without
an answer is counted wrong (its image fails acc+) and reported, an answer of no question is
reported and not scored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from .benchmarks import Benchmark, Input
from .scoring import AnswerLine, BenchScore, format_rows, read_answer_file, require_pairs

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION

SHORT_ANSWER_HINT = "Answer the question using a single word or phrase."
YES_NO_HINT = "Please answer yes or no."

# Column titles of the LLaVA-1.5 paper's MME tables.
_TITLES = {"existence": "Existence", "count": "Count", "position": "Position", "color": "Color",
           "posters": "Posters", "celebrity": "Celebrity", "scene": "Scene", "landmark": "Landmark",
           "artwork": "Artwork", "OCR": "OCR", "commonsense_reasoning": "Commonsense Reasoning",
           "numerical_calculation": "Numerical Calculation", "text_translation": "Text Translation",
           "code_reasoning": "Code Reasoning"}


@dataclass(frozen=True)
class MmeLabel:
    """One ground-truth question: its subtask, its image's label file name ("0001.txt"), the
    question as MME writes it (ending in "Please answer yes or no.") and "yes" or "no"."""

    subtask: str
    file: str
    question: str
    answer: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.subtask, self.file, self.question


def label_file_name(image_name: str) -> str:
    """The label file of an image, as convert_answer_to_mme.py names it: the name before its
    first '.', plus ".txt" ("0001.jpg" -> "0001.txt")."""
    return image_name.split(".")[0] + ".txt"


def parse_pred_ans(pred: str) -> str:
    """An answer read as "yes", "no" or "other", like calculation.py's parse_pred_ans (which
    is given the lowercased answer): the whole answer if it is "yes" or "no", else "yes" if its
    first 4 characters contain "yes", else "no" if they contain "no", else "other"."""
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def question_candidates(prompt: str) -> tuple[str, ...]:
    """The MME questions an answer's prompt can stand for, in the order convert_answer_to_mme.py
    tries them: the prompt with "Answer the question using a single word or phrase." removed
    (then stripped); if it lacks "Please answer yes or no.", that appended after one space, or,
    where no such question exists, after two (a few MME questions have two)."""
    question = prompt
    if SHORT_ANSWER_HINT in question:
        question = question.replace(SHORT_ANSWER_HINT, "").strip()
    if YES_NO_HINT in question:
        return (question,)
    return (f"{question} {YES_NO_HINT}", f"{question}  {YES_NO_HINT}")


def _yes_no(answer: str, where: str) -> str:
    if answer.lower() not in ("yes", "no"):
        raise DataError(f"{where}: ground truth must be Yes or No, got {answer!r}")
    return answer.lower()


def _release_labels(subtask: str, folder: Path) -> list[MmeLabel]:
    """Labels of one subtask folder of the MME release: "question<TAB>answer" lines of the .txt
    files in ``questions_answers_YN/`` (when the folder has ``images/``) or beside the images."""
    qa_folder = folder / "questions_answers_YN" if (folder / "images").is_dir() else folder
    if not qa_folder.is_dir():
        raise DataError(f"{folder}: has images/ but no questions_answers_YN/ folder")
    labels = []
    for txt in sorted(qa_folder.glob("*.txt")):
        for number, line in _lines(txt):
            fields = line.strip().split("\t")
            if len(fields) != 2:
                raise DataError(f"{txt}:{number}: expected question<TAB>answer")
            labels.append(MmeLabel(subtask, txt.name, fields[0], _yes_no(fields[1], f"{txt}:{number}")))
    return labels


def _results_labels(subtask: str, path: Path) -> list[MmeLabel]:
    """Labels of one eval-tool results file: "image<TAB>question<TAB>ground truth" lines (a 4th
    column, a model's answer, is ignored)."""
    labels = []
    for number, line in _lines(path):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) not in (3, 4):
            raise DataError(f"{path}:{number}: expected image<TAB>question<TAB>ground truth")
        labels.append(MmeLabel(subtask, label_file_name(fields[0]), fields[1],
                               _yes_no(fields[2], f"{path}:{number}")))
    return labels


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return ((n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip())


def load_mme_labels(path: Path) -> list[MmeLabel]:
    """The ground truth of every MME subtask found in ``path``: either the eval tool's results
    folder (``Your_Results/<subtask>.txt``) or the MME release folder
    (``MME_Benchmark_release_version/<subtask>/``, with ``images/`` + ``questions_answers_YN/``
    or the label .txt files beside the images). Only the 14 MME subtasks are read. DataError for
    a folder of neither kind, a ground truth other than yes/no, a question given twice, or an
    image without exactly two questions (calculation.py's acc+ needs pairs)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: MME labels must be a folder (the eval tool's Your_Results or the "
                        "MME_Benchmark_release_version folder)")
    if any((path / s).is_dir() for s in SUBTASKS):
        labels = [lab for s in SUBTASKS if (path / s).is_dir() for lab in _release_labels(s, path / s)]
    elif any((path / f"{s}.txt").is_file() for s in SUBTASKS):
        labels = [lab for s in SUBTASKS if (path / f"{s}.txt").is_file()
                  for lab in _results_labels(s, path / f"{s}.txt")]
    else:
        raise DataError(f"{path}: neither an MME eval-tool results folder (<subtask>.txt files such "
                        "as existence.txt) nor the MME release folder (<subtask>/ folders)")
    _check_labels(labels, path)
    return labels


def _check_labels(labels: Sequence[MmeLabel], path: Path) -> None:
    if not labels:
        raise DataError(f"{path}: no MME questions")
    seen: set[tuple[str, str, str]] = set()
    per_image: dict[tuple[str, str], int] = defaultdict(int)
    for lab in labels:
        if lab.key in seen:
            raise DataError(f"{path}: question {lab.question!r} of {lab.subtask}/{lab.file} is given twice")
        seen.add(lab.key)
        per_image[lab.subtask, lab.file] += 1
    for (subtask, file), count in per_image.items():
        if count != 2:
            raise DataError(f"{path}: image {file[:-4]} of {subtask} has {count} question(s); MME "
                            "has two per image")


def pair_mme_answers(answers: Sequence[AnswerLine], labels: Sequence[MmeLabel],
                     answers_path: Path | str = "answers") -> tuple[dict[tuple[str, str, str], str], list[Any]]:
    """Each answered label's key mapped to the answer's text, and the answers of no label as
    (question_id, question) pairs. DataError for two answers to one question."""
    known = {lab.key for lab in labels}
    texts: dict[tuple[str, str, str], str] = {}
    lines: dict[tuple[str, str, str], int] = {}
    unpaired: list[Any] = []
    for answer in answers:
        qid = answer.question_id
        if not isinstance(qid, str) or answer.prompt is None:
            unpaired.append((qid, answer.prompt))
            continue
        subtask, file = qid.split("/")[0], label_file_name(qid.split("/")[-1])
        candidates = question_candidates(answer.prompt)
        key = next(((subtask, file, q) for q in candidates if (subtask, file, q) in known), None)
        if key is None:
            unpaired.append((qid, candidates[0]))
            continue
        if key in texts:
            raise DataError(f"{answers_path}:{answer.number}: second answer to {qid!r} question "
                            f"{key[2]!r} (first on line {lines[key]})")
        texts[key], lines[key] = answer.text, answer.number
    return texts, unpaired


def score_subtask(labels: Sequence[MmeLabel], texts: dict[tuple[str, str, str], str]) -> dict[str, Any]:
    """acc and acc+ (in %), score (their sum), questions n and images of one subtask's labels;
    a label missing from ``texts`` is wrong."""
    right: dict[str, list[bool]] = defaultdict(list)
    for lab in labels:
        text = texts.get(lab.key)
        right[lab.file].append(text is not None and parse_pred_ans(text.lower()) == lab.answer)
    correct = sum(sum(flags) for flags in right.values())
    both = sum(all(flags) for flags in right.values())
    acc, acc_plus = 100 * correct / len(labels), 100 * both / len(right)
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "n": len(labels),
            "images": len(right)}


def _total(parts: dict[str, dict[str, Any]], subtasks: Sequence[str]) -> float | None:
    """Sum of the subtask scores; None unless every one of them has labels."""
    if not all(s in parts for s in subtasks):
        return None
    return sum(parts[s]["score"] for s in subtasks)


def score_mme(answers_path: Path, labels_path: Path) -> BenchScore:
    """MME scores of one answer file against the labels folder (see :func:`load_mme_labels`).
    ``score`` is the perception total, ``extra["cognition"]`` the cognition total (each None
    when a subtask of its group has no labels); parts per subtask: acc, acc_plus, score, n,
    images. ``missing`` lists (subtask, file, question) of unanswered questions."""
    labels = load_mme_labels(labels_path)
    texts, unpaired = pair_mme_answers(read_answer_file(answers_path), labels, answers_path)
    require_pairs(len(texts), answers_path, f"the MME labels of {labels_path}")
    by_subtask: dict[str, list[MmeLabel]] = defaultdict(list)
    for lab in labels:
        by_subtask[lab.subtask].append(lab)
    parts = {s: score_subtask(by_subtask[s], texts) for s in SUBTASKS if s in by_subtask}
    missing = [lab.key for lab in labels if lab.key not in texts]
    return BenchScore("MME", _total(parts, PERCEPTION), parts=parts, scored=len(labels),
                      missing=missing, unpaired=unpaired,
                      extra={"cognition": _total(parts, COGNITION)})


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _block(name: str, subtasks: Sequence[str], parts: dict[str, dict[str, Any]], total: float | None) -> str:
    rows = [(name, *(_TITLES[s] for s in subtasks), "Total")]
    for metric, label in (("score", "score"), ("acc", "acc%"), ("acc_plus", "acc+%")):
        values = [_points(parts[s][metric]) if s in parts else "-" for s in subtasks]
        rows.append((label, *values, _points(total) if metric == "score" else ""))
    return format_rows(rows)


def format_mme_table(score: BenchScore) -> str:
    """The paper's MME layout: a perception block (10 subtasks and the total) and a cognition
    block (4 subtasks and the total), each with the score, acc and acc+ of every subtask."""
    return "\n\n".join([_block("Perception", PERCEPTION, score.parts, score.score),
                        _block("Cognition", COGNITION, score.parts, score.extra.get("cognition"))])


ENTRIES = (
    Benchmark("mme", "MME", "MME: perception total (cognition beside it), acc and acc+ per subtask, as MME's "
                            "eval_tool/calculation.py after LLaVA's convert_answer_to_mme.py.",
              lambda answers, labels, questions: score_mme(answers, labels[0]), format_mme_table,
              labels=Input("required", "MME's ground truth: the eval tool's Your_Results/ folder or the benchmark "
                                       "release folder.", folder=True),
              unit="points"),
)
