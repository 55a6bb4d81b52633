"""MMBench: the question TSV as LLaVA-1.5 reads it, its prompt, CircularEval scoring and the
OpenCompass upload.

- Reading and prompting follow LLaVA's ``model_vqa_mmbench.py``: ``pandas.read_table`` with its
  default NA handling (an empty cell, "NA", "None", ... is NaN, which :func:`is_none` sees), the
  options A-D up to the first missing one, and the prompt ``hint + "\\n" + question`` (when there
  is a hint) then ``"\\nA. option"`` per option; the model is asked that plus ``"\\n"`` and the
  single-prediction suffix (:data:`SINGLE_PREDICTION_SUFFIX`). An answer's question_id is the
  row's ``index``.
- Scoring follows VLMEvalKit's MMBench CircularEval with exact matching (its ``can_infer``,
  without the GPT fallback; the rule set of an era, :data:`MMBENCH_RULES`): the TSV holds every
  question several times with its options rotated, the copies at ``index + k x 1,000,000``; a
  question counts right only when the option read from every copy's answer is that copy's
  ``answer``. A prediction no option can be read from is reported and counts wrong, as is a
  copy without an answer. Only rows with an ``answer`` are scored (MMBench-dev; the test split
  has none: upload it with :func:`write_mmbench_submission`).
- The upload is what LLaVA's ``convert_mmbench_for_submission.py`` writes for the OpenCompass
  server: the TSV without hint, category, source, image, comment and l2-category, a
  ``prediction`` column inserted at position 6, one row per TSV row, as ``.xlsx`` (Sheet1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from ..schemas.eval_files import carries_pictures, is_none, iter_mmbench_images, plain, read_mmbench_table
from .benchmarks import Benchmark, Input, QuestionFormat, Setting, Submission
from .questions import Question
from .scoring import AnswerLine, BenchScore, format_rows, id_key, read_answer_file, require_pairs

OPTIONS = ("A", "B", "C", "D")
#: What model_vqa_mmbench.py appends (after "\n") with --single-pred-prompt, per --lang.
SINGLE_PREDICTION_SUFFIX = {"en": "Answer with the option's letter from the given choices directly.",
                            "cn": "请直接回答选项字母。"}
#: Circular copies of a question sit at index + k x COPY_STRIDE.
COPY_STRIDE = 1_000_000
#: The columns convert_mmbench_for_submission.py drops from the TSV before the upload.
UPLOAD_DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
UPLOAD_PREDICTION_POSITION = 6
PART_COLUMNS = ("category", "l2-category")

#: The answer-extraction rules of VLMEvalKit's exact matching (open-compass/VLMEvalKit), by era.
#: "2023": as MMBench's team released it in 2023 and kept it until July 2025 (the rule of
#: commits bc4b28be-aca64dbb, read at c6bdffd3): an option letter standing alone anywhere in
#: the answer, when it is the only one, else the one option whose text the answer contains.
#: (Its first release, 2023-11/12, differed only in looking for the letters A-E whatever the
#: question's options and in naming a refusal "E"; masktok follows the 2024-25 code.)
#: "2025": since c3371551 (2025-08) with a67ace50's "answer is X" (2026-06), as at e8e78f05:
#: the letter must be among the last four words, a text match is refused for an answer over
#: twice the options' length. LLaVA-1.5's 67.7 (MMBench's server, 2023, whose own code is not
#: public) and the paper's figures were scored before 2025.
MMBENCH_RULES = {"2023": "VLMEvalKit 2023: a lone option letter anywhere, else the one option text inside",
                 "2025": "VLMEvalKit 2025: a lone letter among the last four words, or 'answer is X', else "
                         "the one option text inside an answer at most twice the options' length"}
#: masktok's choice: the rules the published MMBench numbers (LLaVA-1.5's, the paper's) were
#: read with, so that `score sweep` compares like with like.
DEFAULT_MMBENCH_RULES = "2023"

# VLMEvalKit's can_infer_option: answers that refuse (read as "Z", no option), and the
# characters that count as spaces when looking for a bare option letter.
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_API_FAILURE = "Failed to obtain answer via API"
_AS_SPACE = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def options_of(row: Mapping[str, Any]) -> list[str]:
    """LLaVA's get_options: the values of A, B, C, D up to the first missing one."""
    options = []
    for letter in OPTIONS:
        value = row.get(letter)
        if is_none(value):
            break
        options.append(str(value))
    return options


def question_text(row: Mapping[str, Any]) -> str:
    """LLaVA's cur_prompt: ``hint + "\\n" + question`` (question alone without a hint), then
    ``"\\n<letter>. <option>"`` per option. The answer's ``prompt``; the model is asked it plus
    ``"\\n" + SINGLE_PREDICTION_SUFFIX[lang]``."""
    text = str(row["question"])
    hint = row.get("hint")
    if not is_none(hint):
        text = str(hint) + "\n" + text
    for letter, option in zip(OPTIONS, options_of(row)):
        text += "\n" + letter + ". " + option
    return text


def choices_of(row: Mapping[str, Any]) -> dict[str, str]:
    """The options an answer is read against, as VLMEvalKit's build_choices: every letter
    whose cell is not NA (not cut at the first missing one)."""
    import pandas as pd

    return {letter: str(row[letter]) for letter in OPTIONS if letter in row and not pd.isna(row[letter])}


def can_infer_option(text: str, choices: Mapping[str, str], rules: str = DEFAULT_MMBENCH_RULES) -> str | None:
    """VLMEvalKit's can_infer_option: the option letter an answer names, "Z" for a refusal or a
    bare "Z", None when none can be read. With ``.()[],:;!*#{}`` read as spaces, a letter of
    ``choices`` standing alone as a word counts when it is the only such letter (``rules``
    "2025": and its first occurrence is among the last four words; failing that, "answer is
    X" names X)."""
    if _API_FAILURE in text:
        return None
    if any(refusal in text for refusal in _REFUSALS):
        return "Z"
    words = text.translate(_AS_SPACE).split()
    named = [letter for letter in choices if letter in words]
    if len(named) == 1:
        if rules == "2023" or words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and "Z" in words:
        return "Z"
    if rules == "2023":
        return None
    match = _ANSWER_IS.search(text)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def can_infer_text(text: str, choices: Mapping[str, str], rules: str = DEFAULT_MMBENCH_RULES) -> str | None:
    """VLMEvalKit's can_infer_text: the one option whose text (case-insensitive) the answer
    contains; None when none or several do, or (``rules`` "2025") the answer is over twice the
    options' length."""
    text = text.lower()
    if rules == "2025" and len(text) > 2 * sum(len(option) for option in choices.values()):
        return None
    found = [letter for letter, option in choices.items() if option.lower() in text]
    return found[0] if len(found) == 1 else None


def can_infer(text: str, choices: Mapping[str, str], rules: str = DEFAULT_MMBENCH_RULES) -> str | None:
    """VLMEvalKit's can_infer under ``rules`` (:data:`MMBENCH_RULES`): :func:`can_infer_option`,
    else :func:`can_infer_text`."""
    if rules not in MMBENCH_RULES:
        raise DataError(f"MMBench rules {rules!r}: one of {', '.join(MMBENCH_RULES)}")
    text = str(text)
    return can_infer_option(text, choices, rules) or can_infer_text(text, choices, rules)


def _answers_by_id(answers: list[AnswerLine], path: Path) -> dict[str, AnswerLine]:
    by_id: dict[str, AnswerLine] = {}
    for a in answers:
        key = id_key(a.question_id)
        if key in by_id:
            raise DataError(f"{path}:{a.number}: second answer to question {a.question_id!r} (first on "
                            f"line {by_id[key].number}); answers of several rounds (--all-rounds) are "
                            "not scored, one answer per TSV row is")
        by_id[key] = a
    return by_id


def _part_names(rows: list[Any], column: str) -> list[str] | None:
    """The category of each question for ``column``, or None when the TSV leaves it empty."""
    if not rows or column not in rows[0]:
        return None
    names = [None if is_none(row[column]) else str(row[column]) for row in rows]
    return None if all(n is None for n in names) else [n or "(none)" for n in names]


def score_mmbench(answers_path: Path, labels_path: Path, rules: str = DEFAULT_MMBENCH_RULES) -> BenchScore:
    """CircularEval accuracy (%) of an answer file on the labelled rows of an MMBench TSV.

    ``parts``: ``{"category"|"l2-category": {name: {"score": %, "questions": n}}}`` for the
    columns the TSV fills (from each question's first row, index < 1,000,000). ``scored``:
    questions (circular groups); ``missing``: indexes of labelled rows without an answer;
    ``unpaired``: question ids of answers to no labelled row. ``extra``: ``rows`` (labelled
    rows), ``vanilla`` (% of rows right on their own, no circular rule), ``rules`` (the answer
    extraction, :data:`MMBENCH_RULES`), ``answered`` (rows with an answer), ``unparsable``
    (answers no option could be read from), ``unparsable_share`` (% of ``answered``) and
    ``unparsable_examples`` ({index, text}, up to 10).
    DataError for labels that are no MMBench TSV with answers, a copy without its question's
    first row, or an answer file none of whose answers pairs."""
    table = read_mmbench_table(labels_path)
    if "answer" not in table.columns:
        raise DataError(f"{labels_path}: no 'answer' column: MMBench labels are the dev TSV (the "
                        "test split has no answers; write an upload with write_mmbench_submission)")
    rows = [row for _, row in table.iterrows() if not is_none(row["answer"])]
    if not rows:
        raise DataError(f"{labels_path}: no row has an answer (the test split? upload it instead)")
    for row in rows:
        if row["answer"] not in OPTIONS:
            raise DataError(f"{labels_path}: index {int(row['index'])}: answer {row['answer']!r} is "
                            f"not one of {', '.join(OPTIONS)}")
    answers = _answers_by_id(read_answer_file(answers_path), answers_path)
    labelled = {id_key(int(row["index"])) for row in rows}
    unpaired = [a.question_id for a in answers.values() if id_key(a.question_id) not in labelled]
    require_pairs(len(answers) - len(unpaired), answers_path, f"the MMBench labels {labels_path}")

    groups: dict[int, list[Any]] = {}
    for row in rows:  # the first row of a question (index < 1e6) opens its group
        index = int(row["index"])
        if index % COPY_STRIDE == index:
            groups[index] = [row]
    for row in rows:
        index = int(row["index"])
        if index % COPY_STRIDE != index:
            if index % COPY_STRIDE not in groups:
                raise DataError(f"{labels_path}: row {index} is a circular copy of question "
                                f"{index % COPY_STRIDE}, which has no labelled row")
            groups[index % COPY_STRIDE].append(row)

    if rules not in MMBENCH_RULES:
        raise DataError(f"MMBench rules {rules!r}: one of {', '.join(MMBENCH_RULES)}")
    missing: list[int] = []
    unparsable: list[dict[str, Any]] = []
    hits, rows_right = [], 0
    for copies in groups.values():
        right = True
        for row in copies:
            answer = answers.get(id_key(int(row["index"])))
            if answer is None:
                missing.append(int(row["index"]))
                right = False
                continue
            predicted = can_infer(answer.text, choices_of(row), rules)
            if predicted is None:
                unparsable.append({"index": int(row["index"]), "text": answer.text})
            rows_right += predicted == row["answer"]
            right = right and predicted == row["answer"]
        hits.append(right)

    answered = len(rows) - len(missing)
    firsts = [copies[0] for copies in groups.values()]
    parts: dict[str, Any] = {}
    for column in PART_COLUMNS:
        names = _part_names(firsts, column)
        if names is None:
            continue
        parts[column] = {}
        for name in sorted(set(names)):
            mine = [hit for hit, n in zip(hits, names) if n == name]
            parts[column][name] = {"score": 100 * sum(mine) / len(mine), "questions": len(mine)}
    return BenchScore("mmbench", 100 * sum(hits) / len(hits), parts=parts, scored=len(hits),
                      missing=missing, unpaired=unpaired,
                      extra={"rows": len(rows), "vanilla": 100 * rows_right / len(rows), "rules": rules,
                             "answered": answered, "unparsable": len(unparsable),
                             "unparsable_share": 100 * len(unparsable) / answered if answered else None,
                             "unparsable_examples": unparsable[:10]})


def format_mmbench_table(score: BenchScore) -> str:
    """A row for the CircularEval accuracy over all questions, then one per category and
    l2-category (when the TSV has them): questions and accuracy in %."""
    rows = [("part", "questions", "acc%"), ("overall (circular)", str(score.scored), f"{score.score:.2f}")]
    if "vanilla" in score.extra:
        rows.append(("rows, one by one", str(score.extra["rows"]), f"{score.extra['vanilla']:.2f}"))
    for column, names in score.parts.items():
        rows += [(f"{column}: {name}", str(p["questions"]), f"{p['score']:.2f}") for name, p in names.items()]
    table = format_rows(rows)
    if "rules" in score.extra:
        share = score.extra["unparsable_share"]
        table += (f"\nunparsable: {score.extra['unparsable']} of {score.extra['answered']} answers"
                  f"{'' if share is None else f' ({share:.1f}%)'}, counted wrong; options read with the "
                  f"{score.extra['rules']} rules ({MMBENCH_RULES[score.extra['rules']]})")
    return table


def mmbench_warnings(score: BenchScore, examples: int = 3) -> list[str]:
    """score.warnings() plus a line for the answers no option could be read from."""
    lines = score.warnings()
    if score.extra.get("unparsable"):
        shown = "; ".join(f"{e['index']}: {e['text'][:60]!r}" for e in score.extra["unparsable_examples"][:examples])
        lines.append(f"{score.extra['unparsable']} answer(s) name no option (VLMEvalKit's can_infer, "
                     f"{score.extra.get('rules', DEFAULT_MMBENCH_RULES)} rules, no GPT fallback), counted wrong "
                     f"(e.g. {shown})")
    return lines


@dataclass
class MMBenchSubmission:
    """What :func:`write_mmbench_submission` wrote: the file, its rows, the TSV indexes left
    without a prediction and the question ids of answers to no row (not written)."""

    path: Path
    rows: int
    missing: list[int] = field(default_factory=list)
    unpaired: list[Any] = field(default_factory=list)

    def to_dict(self, examples: int = 10) -> dict[str, Any]:
        return {"path": str(self.path), "rows": self.rows, "missing": len(self.missing),
                "unpaired": len(self.unpaired), "missing_examples": self.missing[:examples],
                "unpaired_examples": self.unpaired[:examples]}


def write_mmbench_submission(answers_path: Path, questions_tsv: Path, out_path: Path) -> MMBenchSubmission:
    """The OpenCompass upload of an answer file, as LLaVA's convert_mmbench_for_submission.py
    writes it: the question TSV's rows in order, without its hint, category, source, image,
    comment and l2-category columns, with each row's answer text as ``prediction`` (column 6;
    empty for a row without an answer), saved as .xlsx with openpyxl (sheet "Sheet1", no index
    column). Characters Excel cannot hold (control characters) are dropped from predictions,
    where openpyxl would fail. DataError for a bad TSV or answer file, or one that pairs with
    no row."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    table = read_mmbench_table(questions_tsv)
    answers = _answers_by_id(read_answer_file(answers_path), answers_path)
    indexes = [int(i) for i in table["index"]]
    keys = {id_key(i) for i in indexes}
    unpaired = [a.question_id for k, a in answers.items() if k not in keys]
    require_pairs(len(answers) - len(unpaired), answers_path, f"the MMBench TSV {questions_tsv}")
    predictions = []
    for index in indexes:
        answer = answers.get(id_key(index))
        predictions.append(None if answer is None else ILLEGAL_CHARACTERS_RE.sub("", answer.text))
    upload = table.drop(columns=[c for c in UPLOAD_DROPPED_COLUMNS if c in table.columns])
    upload.insert(min(UPLOAD_PREDICTION_POSITION, len(upload.columns)), "prediction", predictions)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    upload.to_excel(out_path, index=False, engine="openpyxl")
    return MMBenchSubmission(out_path, len(indexes), [i for i, p in zip(indexes, predictions) if p is None],
                             unpaired)


def mmbench_lang(path: Path, lang: str | None) -> str:
    """MMBench's prompt language: ``lang`` if given, else "cn" for a ``*_cn*`` file, else "en"."""
    if lang is not None:
        if lang not in ("en", "cn"):
            raise DataError(f"MMBench's language is 'en' or 'cn', not {lang!r}")
        return lang
    return "cn" if "_cn" in Path(path).name.lower() else "en"


def mmbench_questions(path: Path, lang: str | None) -> list[Question]:
    """The questions of MMBench's TSV, as model_vqa_mmbench.py asks them (--single-pred-prompt)."""
    suffix = SINGLE_PREDICTION_SUFFIX[mmbench_lang(path, lang)]
    questions = []
    for position, (row, image_id, _) in enumerate(iter_mmbench_images(path)):
        options = options_of(row)
        prompt = question_text(row)
        extra = {"round_id": 0, "options": options, "option_char": list(OPTIONS[:len(options)])}
        questions.append(Question(position, plain(row["index"]), image_id, prompt + "\n" + suffix, prompt,
                                  _category(row), extra))
    return questions


def _category(row: Any) -> str | None:
    value = row.get("category")
    return None if is_none(value) else str(value)


ENTRIES = (
    QuestionFormat("mmbench", 1024, carries_pictures, mmbench_questions),
    Benchmark("mmbench", "MMBench", "MMBench: CircularEval accuracy (%), per category and l2-category; options "
                                    "extracted as VLMEvalKit's can_infer, no GPT fallback (unparsable answers count "
                                    "wrong).",
              lambda answers, labels, questions, rules: score_mmbench(answers, labels[0], rules), format_mmbench_table,
              labels=Input("required", "MMBench's TSV with its answer column."), warnings=mmbench_warnings,
              settings=(Setting("--mmbench-rules", "rules", tuple(MMBENCH_RULES), DEFAULT_MMBENCH_RULES,
                                "VLMEvalKit's answer extraction of 2023 (the era of LLaVA-1.5's 67.7 and the "
                                "paper's figures; masktok's default) or of 2025 (stricter: a letter among the last "
                                "four words, text matches length-capped)."),)),
    Submission("mmbench", "MMBench for the OpenCompass server, as LLaVA's convert_mmbench_for_submission.py.",
               "The .xlsx to upload to OpenCompass.", lambda answers, questions, out: _upload(answers, questions, out),
               Input("required", "MMBench's question TSV.")),
)


def _upload(answers: Path, questions: Path, out: Path) -> tuple[int, int, int]:
    written = write_mmbench_submission(answers, questions, out)
    return written.rows, len(written.missing), len(written.unpaired)
