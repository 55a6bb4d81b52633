"""VQA-family scores of LLaVA answer files: VQAv2 and VizWiz accuracy, and the VQAv2 / VizWiz
test submissions, as LLaVA-1.5 writes them and the official evaluators score them (TextVQA,
scored with LLaVA's m4c rule: textvqa.py).

The rules live in vqa_rules.py. By default (``--vqa-rule official``) a val answer is scored as
its upload would be: the answer through the EvalAI processor of LLaVA's ``m4c_evaluator.py``
(:func:`normalize_vqa_answer`, as LLaVA's converters write the upload), then VQAv2's official
``vqaEval.py`` (human answers processed only when they disagree) or VizWiz's (human answers
raw). ``--vqa-rule m4c`` gives the m4c-style number instead (both sides normalised, m4c's
``TextVQAAccuracyEvaluator``). Unlike LLaVA's scripts, a question without an answer is counted
wrong and reported, and an answer of no question is reported and not scored (see ``scoring.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from .benchmarks import Benchmark, Input, Setting, Submission
from .questions import read_question_file
from .scoring import (AnswerLine, BenchScore, format_rows, id_key, load_json, read_answer_file, read_json_lines,
                      require_pairs)
from .vqa_rules import RULES, normalize_vqa_answer, official_prediction, vizwiz_accuracy, vqa_accuracy, vqaeval_accuracy

#: ``masktok score vqa --vqa-rule``: the benchmark's official evaluator (masktok's default: the
#: number EvalAI would give the upload) or LLaVA's m4c rule (the number named m4c-style).
VQA_RULES = ("official", "m4c")

# --- pairing and scoring -------------------------------------------------------------------------

@dataclass(frozen=True)
class VqaLabel:
    """The human answers of one question, its answer type and the id it is reported by."""

    shown: Any
    answers: tuple[str, ...]
    answer_type: str | None = None
    #: each answer dict's other fields (answer_id, confidence), for vqaEval's dict equality
    others: tuple[str, ...] | None = None


def human_answers(raw: Any, path: Path, shown: Any) -> tuple[str, ...]:
    """Answer strings of a label: TextVQA's strings or VQA's [{"answer": ...}] objects."""
    if isinstance(raw, list) and raw:
        answers = tuple(a.get("answer") if isinstance(a, dict) else a for a in raw)
        if all(isinstance(a, str) for a in answers):
            return answers
    raise DataError(f"{path}: question {shown!r} has no list of answer strings")


def _others(raw: Any) -> tuple[str, ...] | None:
    """The fields besides "answer" of each answer dict (None for plain strings)."""
    if not all(isinstance(a, dict) for a in raw):
        return None
    return tuple(json.dumps({k: v for k, v in a.items() if k != "answer"}, sort_keys=True) for a in raw)


def label_accuracy(rule: str, text: str, label: VqaLabel) -> float:
    """The accuracy of answer ``text`` on ``label`` under ``rule`` (vqa_rules.RULES)."""
    if rule == "m4c":
        return vqa_accuracy(text, label.answers)
    if rule == "vqav2":
        return vqaeval_accuracy(official_prediction(text), label.answers, label.others)
    if rule == "vizwiz":
        return vizwiz_accuracy(official_prediction(text), label.answers)
    raise ValueError(f"unknown VQA rule {rule!r}")


def score_keyed(benchmark: str, labels: dict[Any, VqaLabel], keyed: Iterable[tuple[AnswerLine, Any, Any]],
           answers_path: Path, labels_path: Path, rule: str = "m4c") -> BenchScore:
    """Score (answer, label key, id shown if unpaired) triples against ``labels`` under ``rule``
    (vqa_rules.RULES, named in ``extra["rule"]``); answers are summed in file order, as m4c
    does, then the missing ones as 0."""
    answered: dict[Any, AnswerLine] = {}
    unpaired, accs = [], []
    per_type: dict[str, list[float]] = {}
    for answer, key, shown in keyed:
        if key not in labels:
            unpaired.append(shown)
            continue
        if key in answered:
            raise DataError(f"{answers_path}:{answer.number}: second answer to question {shown!r} "
                            f"(first on line {answered[key].number})")
        answered[key] = answer
        label = labels[key]
        accs.append(label_accuracy(rule, answer.text, label))
        if label.answer_type is not None:
            per_type.setdefault(label.answer_type, []).append(accs[-1])
    require_pairs(len(answered), answers_path, str(labels_path))
    missing = [label for key, label in labels.items() if key not in answered]
    for label in missing:
        accs.append(0.0)
        if label.answer_type is not None:
            per_type.setdefault(label.answer_type, []).append(0.0)
    parts = {name: {"accuracy": 100 * sum(v) / len(v), "n": len(v)} for name, v in sorted(per_type.items())}
    return BenchScore(benchmark, 100 * sum(accs) / len(accs), parts=parts, scored=len(accs),
                      missing=[label.shown for label in missing], unpaired=unpaired, extra={"rule": RULES[rule]})


def _vqav2_labels(annotations: list, path: Path) -> dict[str, VqaLabel]:
    labels = {}
    for row in annotations:
        if not isinstance(row, dict) or "question_id" not in row:
            raise DataError(f"{path}: an annotation without question_id (not VQAv2 annotations)")
        qid = row["question_id"]
        labels[id_key(qid)] = VqaLabel(qid, human_answers(row.get("answers"), path, qid), row.get("answer_type"),
                                       _others(row["answers"]))
    return labels


def _vizwiz_labels(rows: list, path: Path) -> dict[str, VqaLabel]:
    labels = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise DataError(f"{path}: an annotation without image (not VizWiz annotations)")
        labels[row["image"]] = VqaLabel(row["image"], human_answers(row.get("answers"), path, row["image"]),
                                        row.get("answer_type"))
    return labels


def score_vqa(answers_path: Path, labels_path: Path, questions_path: Path | None = None,
              rule: str = "official") -> BenchScore:
    """VQA accuracy (%) against VQAv2 annotations ({"annotations": [...]}, paired by question_id)
    or VizWiz annotations (a list of {"image", "answers", ...}, paired by image: answer
    question_id -> image through ``questions_path``, LLaVA's question jsonl, required there).
    Given a question file, only the labels of its questions are scored. parts: per answer_type.
    ``rule``: "official" (that benchmark's evaluator) or "m4c" (see the module docstring)."""
    if rule not in VQA_RULES:
        raise DataError(f"--vqa-rule {rule!r}: one of {', '.join(VQA_RULES)}")
    data = load_json(labels_path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        benchmark, labels = "vqav2", _vqav2_labels(data["annotations"], labels_path)
        question_of = None
        if questions_path is not None:
            asked = {id_key(q.question_id) for q in read_question_file(questions_path).questions}
            labels = {key: label for key, label in labels.items() if key in asked}
    elif isinstance(data, list) and data and isinstance(data[0], dict) and "image" in data[0]:
        benchmark, labels = "vizwiz", _vizwiz_labels(data, labels_path)
        if questions_path is None:
            raise DataError(f"{labels_path} is VizWiz annotations, paired by image: give the LLaVA "
                            "question file (question_id -> image)")
        question_of = {id_key(q.question_id): q.image for q in read_question_file(questions_path).questions}
        asked_images = set(question_of.values())
        labels = {key: label for key, label in labels.items() if key in asked_images}
    else:
        raise DataError(f"{labels_path}: neither VQAv2 annotations ({{\"annotations\": [...]}}) nor "
                        "VizWiz annotations (a list of {\"image\", \"answers\", ...})")
    answers = read_answer_file(answers_path)
    if question_of is None:
        keyed = [(a, id_key(a.question_id), a.question_id) for a in answers]
    else:
        keyed = [(a, question_of.get(id_key(a.question_id)), a.question_id) for a in answers]
    return score_keyed(benchmark, labels, keyed, answers_path, labels_path,
                       benchmark if rule == "official" else "m4c")


# --- submissions ---------------------------------------------------------------------------------

def _answers_by_id(answers_path: Path) -> dict[str, str]:
    """question id -> text; DataError for a second answer to one question."""
    texts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for answer in read_answer_file(answers_path):
        key = id_key(answer.question_id)
        if key in texts:
            raise DataError(f"{answers_path}:{answer.number}: second answer to question "
                            f"{answer.question_id!r} (first on line {lines[key]})")
        texts[key], lines[key] = answer.text, answer.number
    return texts


def _write_submission(entries: list[dict[str, Any]], out_path: Path) -> None:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(entries), encoding="utf-8")


def _write_upload(answers_path: Path, questions_path: Path, out_path: Path, key: str,
                  split_path: Path | None = None) -> tuple[int, int]:
    """One ``{key: <the question's key>, "answer": normalised text}`` per question of a LLaVA
    question file, in its order, "" where it has no answer; (written, missing): the questions
    without an answer, of the split file ``split_path`` when given (every one of its questions
    must be in the question file). DataError when no answer is of these questions."""
    texts = _answers_by_id(answers_path)
    questions = read_question_file(questions_path).questions
    entries = [{key: q.question_id if key == "question_id" else q.image,
                "answer": normalize_vqa_answer(texts[id_key(q.question_id)]) if id_key(q.question_id) in texts else ""}
               for q in questions]
    require_pairs(sum(id_key(q.question_id) in texts for q in questions), answers_path, str(questions_path))
    needed = questions
    if split_path is not None:
        needed = read_question_file(split_path).questions
        known = {id_key(q.question_id) for q in questions}
        stray = next((q.question_id for q in needed if id_key(q.question_id) not in known), None)
        if stray is not None:
            raise DataError(f"{split_path}: question {stray!r} is not in {questions_path} (--split must be a "
                            "subset of --questions: test-dev of test2015)")
    _write_submission(entries, out_path)
    return len(entries), sum(id_key(q.question_id) not in texts for q in needed)


def write_vqav2_submission(answers_path: Path, test_questions_path: Path, out_path: Path,
                           split_path: Path | None = None) -> tuple[int, int]:
    """The VQAv2 test-dev/test upload, as LLaVA's convert_vqav2_for_submission.py: one
    {"question_id", "answer"} per question of ``test_questions_path``
    (``llava_vqav2_mscoco_test2015.jsonl``, every id EvalAI takes), in its order, answers
    normalised, "" where there is none. Returns (written, missing), missing counted over the
    questions of ``split_path`` (the split uploaded: ``llava_vqav2_mscoco_test-dev2015.jsonl``
    for test-dev, the test2015 file for test-std), all of them by default; DataError when no
    answer is of these questions."""
    return _write_upload(answers_path, test_questions_path, out_path, "question_id", split_path)


def write_vizwiz_submission(answers_path: Path, questions_path: Path, out_path: Path) -> tuple[int, int]:
    """The VizWiz test upload, as LLaVA's convert_vizwiz_for_submission.py: one {"image",
    "answer"} per question of ``questions_path`` (``llava_test.jsonl``), in its order, answers
    normalised. Where LLaVA stops at a question without an answer, it is written as "" and
    counted. Returns (written, missing); DataError when no answer is of these questions."""
    return _write_upload(answers_path, questions_path, out_path, "image")


def format_vqa_table(score: BenchScore) -> str:
    """The overall accuracy and one row per answer type: questions and accuracy in %."""
    rows = [("answer type", "n", "acc%"), (f"{score.benchmark} (all)", str(score.scored), _pct(score.score))]
    rows += [(name, str(part["n"]), _pct(part["accuracy"])) for name, part in score.parts.items()]
    table = format_rows(rows)
    return table + (f"\nrule: {score.extra['rule']}" if "rule" in score.extra else "")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _upload(write: Any) -> Any:
    """An upload writer as the registry calls it: (rows, missing, unpaired)."""
    return lambda answers, questions, out, *split: (*write(answers, questions, out, *split), 0)


ENTRIES = (
    Benchmark("vqa", "VQA", "VQAv2 or VizWiz on val: VQA accuracy (%) by the benchmark's official "
                                   "evaluator on the answer as uploaded (--vqa-rule m4c: LLaVA's m4c rule).",
              lambda answers, labels, questions, rule: score_vqa(answers, labels[0], questions, rule),
              format_vqa_table,
              labels=Input("required", "VQAv2 val annotations (v2_mscoco_val2014_annotations.json) or VizWiz's "
                                       "val.json."),
              questions=Input("optional", "LLaVA's question file (VizWiz: maps question ids to image names)."),
              paper_key=lambda result: result.benchmark,  # "vqav2" or "vizwiz", by the labels
              settings=(Setting("--vqa-rule", "rule", VQA_RULES, "official",
                                "official: VQAv2's vqaEval.py or VizWiz's evaluator on the answer as uploaded "
                                "(human answers processed only when they disagree; VizWiz's raw); m4c: LLaVA's "
                                "m4c_evaluator.py, both sides normalised."),)),
    Submission("vqav2", "VQAv2 test-dev/test for EvalAI, as LLaVA's convert_vqav2_for_submission.py.",
               "The JSON to upload to EvalAI.", _upload(write_vqav2_submission),
               Input("required", "LLaVA's llava_vqav2_mscoco_test2015.jsonl (every test2015 question id)."),
               split=Input("required", "The split uploaded, whose questions need an answer: LLaVA's "
                                       "llava_vqav2_mscoco_test-dev2015.jsonl (test-dev), or the test2015 file "
                                       "(test-std).")),
    Submission("vizwiz", "VizWiz test for EvalAI, as LLaVA's convert_vizwiz_for_submission.py.",
               "The JSON to upload to EvalAI.", _upload(write_vizwiz_submission),
               Input("required", "LLaVA's vizwiz llava_test.jsonl.")),
)
