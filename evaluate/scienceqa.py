"""ScienceQA scores of LLaVA-style answer files, equal to LLaVA-1.5's
``llava/eval/eval_science_qa.py`` on its question file ``llava_test_CQM-A.json``.

The ground truth is the question file's own gpt turn (the answer's letter), the number of
choices is read from the question text (:func:`count_choices`), and an answer's letter is read
as eval_science_qa.py reads it (:func:`extract_letter`). ScienceQA-IMG, the paper's number, is
the accuracy over the items with an image. Answers pair with items by id.

Unlike eval_science_qa.py, which decides "with an image" from the answer's prompt (so a missing
answer, whose prompt is 'Unknown', drops out of IMG), an item's image comes from the question
file: a missing answer is counted wrong in its own group and reported. With every item answered
(by LLaVA's prompts) the two agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from ..schemas.eval_files import file_format
from .benchmarks import Benchmark, Input, QuestionFormat
from .questions import Question, refuse_image
from .scoring import BenchScore, format_rows, id_key, read_answer_file, require_pairs

SINGLE_PREDICTION_SUFFIX = "Answer with the option's letter from the given choices directly."
IMAGE_TOKEN = "<image>"
OPTIONS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"  # eval_science_qa.py's parsed answer when no letter is found, and its missing answer
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # eval_science_qa.py's pattern, '.' unescaped


@dataclass(frozen=True)
class ScienceItem:
    """One question of LLaVA's ScienceQA file: id, the human turn with "<image>" removed and
    stripped, the gpt turn's letter (None without one) and the image (None for text-only)."""

    id: str
    question: str
    answer: str | None
    image: str | None


def _item(entry: Any, index: int, path: Path) -> ScienceItem:
    where = f"{path}: item {index + 1}"
    if not isinstance(entry, dict) or "id" not in entry:
        raise DataError(f"{where}: not a ScienceQA question (expected an object with id and conversations)")
    where = f"{where} (id {entry['id']!r})"
    turns = entry.get("conversations")
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) \
            or not isinstance(turns[0].get("value"), str):
        raise DataError(f"{where}: conversations must be a list starting with the human turn's value")
    answer = None
    if len(turns) > 1:
        if not isinstance(turns[1], dict) or not isinstance(turns[1].get("value"), str):
            raise DataError(f"{where}: the second turn must be the gpt turn with a value")
        answer = turns[1]["value"]
    image = entry.get("image")
    if "image" in entry and not isinstance(image, str):
        raise DataError(f"{where}: image must be a file name")
    if image is not None:
        refuse_image(image, where)
    return ScienceItem(id_key(entry["id"]), turns[0]["value"].replace(IMAGE_TOKEN, "").strip(), answer, image)


def read_scienceqa(path: Path) -> list[ScienceItem]:
    """Every item of LLaVA's ScienceQA question file (a JSON list of {"id", "conversations",
    "image"?}), in file order. DataError for a file that is no such list, naming the bad item,
    or one that repeats an id."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON list of ScienceQA questions "
                        "(LLaVA's llava_test_CQM-A.json)")
    items = [_item(entry, i, path) for i, entry in enumerate(data)]
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            raise DataError(f"{path}: item {i + 1}: id {item.id!r} given twice")
        seen.add(item.id)
    return items


def question_text(item: ScienceItem) -> str:
    """What the model is asked (model_vqa_science.py with --single-pred-prompt): the question,
    a newline, then :data:`SINGLE_PREDICTION_SUFFIX`."""
    return f"{item.question}\n{SINGLE_PREDICTION_SUFFIX}"


def answer_prompt(item: ScienceItem) -> str:
    """The answer line's ``prompt`` as LLaVA writes it: "<image>\\n" + question_text for an item
    with an image, question_text alone otherwise."""
    text = question_text(item)
    return f"{IMAGE_TOKEN}\n{text}" if item.image is not None else text


def count_choices(question: str) -> int:
    """The number of choices of a question: how many of the letters A, B, C, ... in turn start
    an option line ("\\nA. ", "\\nB. ", ...). On llava_test_CQM-A.json this equals the count
    of such lines for every item and reproduces eval_science_qa.py's verdicts (choice texts may
    span lines, so counting trailing lines would not)."""
    count = 0
    for letter in OPTIONS:
        if f"\n{letter}. " not in question:
            break
        count += 1
    return count


def extract_letter(text: str, n_choices: int) -> str:
    """The letter an answer counts as, by eval_science_qa.py's rule: the text itself if it is
    one of A-E; its first character if that is one of A-E followed by ". "; else the letter of
    the only match of ``The answer is ([A-Z]).`` (the '.' matches any character). FAILED when
    none applies (no match or several), and when the letter is beyond the item's n_choices
    (get_pred_idx's -1: counted wrong)."""
    if text in OPTIONS:
        letter = text
    elif len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else FAILED
    return letter if letter in OPTIONS[:n_choices] else FAILED


def _ground_truth(item: ScienceItem, path: Path) -> str:
    if item.answer not in OPTIONS[:count_choices(item.question)]:
        raise DataError(f"{path}: item {item.id!r}: ground truth {item.answer!r} is not the letter of "
                        "one of its choices (a question file without answers?)")
    return item.answer


def _group(flags: Sequence[bool]) -> dict[str, Any]:
    correct = sum(flags)
    return {"n": len(flags), "correct": correct,
            "accuracy": 100 * correct / len(flags) if flags else None}


def score_scienceqa(answers_path: Path, questions_path: Path) -> BenchScore:
    """ScienceQA scores of one answer file against LLaVA's question file. ``score`` is the
    ScienceQA-IMG accuracy (%, items with an image), ``extra["all"]`` the accuracy over all
    items; parts: n, correct and accuracy of "img", "no_img" and "all", and "failed" (answers
    read as no letter of the choices, missing ones included). DataError for two answers to one
    item or an item whose ground truth is no letter of its choices."""
    items = read_scienceqa(questions_path)
    truths = {item.id: _ground_truth(item, questions_path) for item in items}
    texts: dict[str, str] = {}
    unpaired = []
    for answer in read_answer_file(answers_path):
        key = id_key(answer.question_id)
        if key not in truths:
            unpaired.append(answer.question_id)
        elif key in texts:
            raise DataError(f"{answers_path}:{answer.number}: second answer to item {key!r}")
        else:
            texts[key] = answer.text
    require_pairs(len(texts), answers_path, str(questions_path))
    img: list[bool] = []
    no_img: list[bool] = []
    failed = 0
    for item in items:
        letter = extract_letter(texts.get(item.id, FAILED), count_choices(item.question))
        failed += letter == FAILED
        (img if item.image is not None else no_img).append(letter == truths[item.id])
    parts = {"img": _group(img), "no_img": _group(no_img), "all": _group(img + no_img), "failed": failed}
    return BenchScore("ScienceQA", parts["img"]["accuracy"], parts=parts, scored=len(items),
                      missing=[item.id for item in items if item.id not in texts], unpaired=unpaired,
                      extra={"all": parts["all"]["accuracy"]})


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_scienceqa_table(score: BenchScore) -> str:
    """One row per subset (IMG, the paper's number; no image; all): questions, correct, accuracy %."""
    rows = [("subset", "n", "correct", "acc%")]
    for key, name in (("img", "IMG"), ("no_img", "no image"), ("all", "all")):
        part = score.parts[key]
        rows.append((name, str(part["n"]), str(part["correct"]), _cell(part["accuracy"])))
    return format_rows(rows)


def scienceqa_questions(path: Path, lang: str | None = None) -> list[Question]:
    """The questions of LLaVA's ScienceQA file, as model_vqa_science.py asks them."""
    return [Question(i, item.id, item.image, question_text(item), answer_prompt(item))
            for i, item in enumerate(read_scienceqa(path))]


ENTRIES = (
    QuestionFormat("scienceqa", 1024, lambda path: file_format(path) == "scienceqa", scienceqa_questions),
    Benchmark("sqa", "SQA-IMG", "ScienceQA: IMG accuracy (%) and the accuracy over all questions, with "
                                "eval_science_qa.py's letter extraction.",
              lambda answers, labels, questions: score_scienceqa(answers, questions), format_scienceqa_table,
              questions=Input("required", "LLaVA's ScienceQA file (llava_test_CQM-A.json): its answers are the "
                                          "labels.")),
)
