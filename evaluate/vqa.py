"""VQA-family scores of LLaVA answer files: VQAv2 and VizWiz accuracy, and the VQAv2 / VizWiz
test submissions, as LLaVA-1.5 computes and writes them (TextVQA, scored with the same rule:
textvqa.py).

Answers and ground-truth answers are both normalised by :func:`normalize_vqa_answer`, a port of
the EvalAI answer processor in LLaVA's ``llava/eval/m4c_evaluator.py`` (quirks included). An
answer's accuracy is the VQA soft accuracy of m4c's ``TextVQAAccuracyEvaluator``
(:func:`vqa_accuracy`). Unlike LLaVA's scripts, a question without an answer is counted wrong and
reported, and an answer of no question is reported and not scored (see ``scoring.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from .benchmarks import Benchmark, Input, Submission
from .questions import read_question_file
from .scoring import (AnswerLine, BenchScore, format_rows, id_key, load_json, read_answer_file, read_json_lines,
                      require_pairs)

# --- the EvalAI answer processor (m4c_evaluator.EvalAIAnswerProcessor) ---------------------------

# The table as m4c has it, oddities kept: the capitalised keys ("Im", "Ive", "Id've", "I'dve")
# never match (words are lowercased first), and "somebody'd" maps to "somebodyd".
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
# m4c's regex, malformed as it is: "(?!<=\d)" is a lookahead for the text "<=" and a digit (never
# there, the next character is the "."), not the lookbehind "(?<!\d)" it was meant to be. So every
# "." not followed by a digit goes: "end." -> "end", "3." -> "3", while "3.5" and ".5" stay.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# m4c calls PERIOD_STRIP.sub("", text, re.UNICODE): the flag lands in ``count``, so at most
# int(re.UNICODE) == 32 periods are removed.
PERIOD_STRIP_COUNT = 32
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCTUATIONS = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")


def _word_tokenize(text: str) -> str:
    """m4c's ``word_tokenize``: lowercase, drop every "," and "?", split off "'s"."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _process_punctuation(text: str) -> str:
    """m4c's ``process_punctuation``: a punctuation mark goes (no space left) where it touches a
    space in ``text``, or everywhere when ``text`` has a comma between digits; else it becomes a
    space. Then the period rule (PERIOD_STRIP, at most 32 removals)."""
    digit_comma = COMMA_STRIP.search(text) is not None
    out = text
    for mark in PUNCTUATIONS:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """m4c's ``process_digit_article``: number words to digits, articles dropped, contractions
    restored, words joined by single spaces."""
    words = [NUMBER_MAP.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """An answer as EvalAI compares it (m4c's ``EvalAIAnswerProcessor.__call__``):
    "The Two dogs." -> "2 dogs", "dont" -> "don't", "2,000" -> "2000", "x-ray" -> "x ray"."""
    text = _word_tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA soft accuracy, as m4c's ``TextVQAAccuracyEvaluator``: both sides normalised; for each
    human answer left out in turn, min(1, matches among the others / 3); the mean of those. With
    10 answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1."""
    if not gt_answers:
        raise ValueError("no ground-truth answers")
    predicted = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in gt_answers]
    accs = []
    for left_out in range(len(humans)):
        matches = sum(1 for i, a in enumerate(humans) if i != left_out and a == predicted)
        accs.append(min(1, float(matches) / 3))
    return sum(accs) / len(accs)


# --- pairing and scoring -------------------------------------------------------------------------

@dataclass(frozen=True)
class VqaLabel:
    """The human answers of one question, its answer type and the id it is reported by."""

    shown: Any
    answers: tuple[str, ...]
    answer_type: str | None = None


def human_answers(raw: Any, path: Path, shown: Any) -> tuple[str, ...]:
    """Answer strings of a label: TextVQA's strings or VQA's [{"answer": ...}] objects."""
    if isinstance(raw, list) and raw:
        answers = tuple(a.get("answer") if isinstance(a, dict) else a for a in raw)
        if all(isinstance(a, str) for a in answers):
            return answers
    raise DataError(f"{path}: question {shown!r} has no list of answer strings")


def score_keyed(benchmark: str, labels: dict[Any, VqaLabel], keyed: Iterable[tuple[AnswerLine, Any, Any]],
           answers_path: Path, labels_path: Path) -> BenchScore:
    """Score (answer, label key, id shown if unpaired) triples against ``labels``; answers are
    summed in file order, as m4c does, then the missing ones as 0."""
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
        accs.append(vqa_accuracy(answer.text, label.answers))
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
                      missing=[label.shown for label in missing], unpaired=unpaired)


def _vqav2_labels(annotations: list, path: Path) -> dict[str, VqaLabel]:
    labels = {}
    for row in annotations:
        if not isinstance(row, dict) or "question_id" not in row:
            raise DataError(f"{path}: an annotation without question_id (not VQAv2 annotations)")
        qid = row["question_id"]
        labels[id_key(qid)] = VqaLabel(qid, human_answers(row.get("answers"), path, qid), row.get("answer_type"))
    return labels


def _vizwiz_labels(rows: list, path: Path) -> dict[str, VqaLabel]:
    labels = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise DataError(f"{path}: an annotation without image (not VizWiz annotations)")
        labels[row["image"]] = VqaLabel(row["image"], human_answers(row.get("answers"), path, row["image"]),
                                        row.get("answer_type"))
    return labels


def score_vqa(answers_path: Path, labels_path: Path, questions_path: Path | None = None) -> BenchScore:
    """VQA accuracy (%) against VQAv2 annotations ({"annotations": [...]}, paired by question_id)
    or VizWiz annotations (a list of {"image", "answers", ...}, paired by image: answer
    question_id -> image through ``questions_path``, LLaVA's question jsonl, required there).
    Given a question file, only the labels of its questions are scored. parts: per answer_type."""
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
    return score_keyed(benchmark, labels, keyed, answers_path, labels_path)


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


def _write_upload(answers_path: Path, questions_path: Path, out_path: Path, key: str) -> tuple[int, int]:
    """One ``{key: <the question's key>, "answer": normalised text}`` per question of a LLaVA
    question file, in its order, "" where it has no answer; (written, missing). DataError when
    no answer is of these questions."""
    texts = _answers_by_id(answers_path)
    entries, missing = [], 0
    for q in read_question_file(questions_path).questions:
        text = texts.get(id_key(q.question_id))
        missing += text is None
        entries.append({key: q.question_id if key == "question_id" else q.image,
                        "answer": "" if text is None else normalize_vqa_answer(text)})
    require_pairs(len(entries) - missing, answers_path, str(questions_path))
    _write_submission(entries, out_path)
    return len(entries), missing


def write_vqav2_submission(answers_path: Path, test_questions_path: Path, out_path: Path) -> tuple[int, int]:
    """The VQAv2 test-dev/test upload, as LLaVA's convert_vqav2_for_submission.py: one
    {"question_id", "answer"} per question of ``test_questions_path``
    (``llava_vqav2_mscoco_test2015.jsonl``), in its order, answers normalised, "" where there is
    none. Returns (written, missing); DataError when no answer is of these questions."""
    return _write_upload(answers_path, test_questions_path, out_path, "question_id")


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
    return format_rows(rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _upload(write: Any) -> Any:
    """An upload writer as the registry calls it: (rows, missing, unpaired)."""
    return lambda answers, questions, out: (*write(answers, questions, out), 0)


ENTRIES = (
    Benchmark("vqa", "VQA", "VQAv2 or VizWiz on val: VQA accuracy (%) with the EvalAI answer normalisation.",
              lambda answers, labels, questions: score_vqa(answers, labels[0], questions), format_vqa_table,
              labels=Input("required", "VQAv2 val annotations (v2_mscoco_val2014_annotations.json) or VizWiz's "
                                       "val.json."),
              questions=Input("optional", "LLaVA's question file (VizWiz: maps question ids to image names)."),
              paper_key=lambda result: result.benchmark),  # "vqav2" or "vizwiz", by the labels
    Submission("vqav2", "VQAv2 test-dev/test for EvalAI, as LLaVA's convert_vqav2_for_submission.py.",
               "The JSON to upload to EvalAI.", _upload(write_vqav2_submission),
               Input("required", "LLaVA's llava_vqav2_mscoco_test2015.jsonl (every test2015 question id).")),
    Submission("vizwiz", "VizWiz test for EvalAI, as LLaVA's convert_vizwiz_for_submission.py.",
               "The JSON to upload to EvalAI.", _upload(write_vizwiz_submission),
               Input("required", "LLaVA's vizwiz llava_test.jsonl.")),
)
