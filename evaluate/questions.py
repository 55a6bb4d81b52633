"""LLaVA-1.5's benchmark question files, read exactly as LLaVA's eval scripts read them.

Three formats, told apart by the file itself:

- JSON Lines (``model_vqa_loader.py``: VQAv2, GQA, VizWiz, TextVQA, POPE, MME; ``model_vqa.py``:
  MM-Vet): ``{"question_id", "image", "text", "category"?}`` per line. Question ids repeat by
  design (MME asks two questions per image and uses the image path as the id; TextVQA's ids are
  image ids), so a question is known by its **line**, never by its id alone.
- ScienceQA's JSON list (``model_vqa_science.py``): ``{"id", "conversations", "image"?}``;
  items without an image are answered without one (evaluate/scienceqa.py).
- MMBench's TSV (``model_vqa_mmbench.py``): one row per question, the picture as base64 inside
  the row; circular copies of a question at index + k x 1,000,000 carry the same picture. The
  cache holds one image per distinct picture, named by its content (``schemas/eval_files.embedded_image_id``);
  ``masktok plan`` decodes them into the job (evaluate/mmbench.py has the prompt and the rule).

Every question carries what the model is asked (``text``, without the image token), the answer
line's ``prompt`` as LLaVA writes it, and LLaVA-1.5's ``max_new_tokens`` for its kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from ..schemas.eval_files import carries_pictures, file_format, is_none, iter_mmbench_images, plain
from .scoring import read_json_lines

#: LLaVA-1.5's generation length per kind: model_vqa_loader.py's default, and the 1024 that
#: model_vqa.py (MM-Vet), model_vqa_science.py and model_vqa_mmbench.py hard-code.
MAX_NEW_TOKENS = {"loader": 128, "mm-vet": 1024, "scienceqa": 1024, "mmbench": 1024}


@dataclass(frozen=True)
class Question:
    """One question line of a benchmark file."""

    line: int  # 0-based position among the file's questions: the key of its answer
    question_id: Any  # as the file has it (int or str; MMBench: the row's index)
    image: str | None  # the image id in the cache; None: a text-only question (ScienceQA)
    text: str  # what the model is asked, after the image
    prompt: str  # the answer line's "prompt", as LLaVA's script writes it
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more answer fields (MMBench's options)


@dataclass(frozen=True)
class QuestionFile:
    """A benchmark file's questions, in file order, and the kind of script that reads it."""

    path: Path
    kind: str  # a key of MAX_NEW_TOKENS
    questions: list[Question]

    @property
    def max_new_tokens(self) -> int:
        return MAX_NEW_TOKENS[self.kind]


def is_mm_vet(path: Path) -> bool:
    """MM-Vet's file (``llava-mm-vet.jsonl``) is read by model_vqa.py, with 1024 new tokens."""
    name = Path(path).name.lower()
    return "mm-vet" in name or "mmvet" in name


def read_question_file(path: Path, lang: str | None = None) -> QuestionFile:
    """The questions of a LLaVA-1.5 benchmark file (see the module docstring). ``lang`` picks
    MMBench's single-prediction suffix ("en" or "cn"; default: "cn" when the file name says
    ``_cn``, as LLaVA's mmbench_cn.sh passes it)."""
    path = Path(path)
    fmt = file_format(path)
    if fmt == "scienceqa":
        questions, kind = _scienceqa_questions(path), "scienceqa"
    elif fmt == "mmbench":
        questions, kind = _mmbench_questions(path, lang), "mmbench"
    else:
        questions, kind = _jsonl_questions(path), "mm-vet" if is_mm_vet(path) else "loader"
    if not questions:
        raise DataError(f"{path} holds no question")
    return QuestionFile(path, kind, questions)


def _jsonl_questions(path: Path) -> list[Question]:
    questions = []
    for number, q in read_json_lines(path):
        try:
            text = q["text"]
            if not isinstance(text, str) or not isinstance(q["image"], str):
                raise TypeError("'text' and 'image' must be strings")
            questions.append(Question(len(questions), q["question_id"], q["image"], text, text, q.get("category")))
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}, line {number}: not a question ({type(exc).__name__}: {exc}); "
                            'expected {"question_id", "image", "text"}') from None
    return questions


def _scienceqa_questions(path: Path) -> list[Question]:
    from . import scienceqa

    return [Question(i, item.id, item.image, scienceqa.question_text(item), scienceqa.answer_prompt(item))
            for i, item in enumerate(scienceqa.read_scienceqa(path))]


def mmbench_lang(path: Path, lang: str | None) -> str:
    """MMBench's prompt language: ``lang`` if given, else "cn" for a ``*_cn*`` file, else "en"."""
    if lang is not None:
        if lang not in ("en", "cn"):
            raise DataError(f"MMBench's language is 'en' or 'cn', not {lang!r}")
        return lang
    return "cn" if "_cn" in Path(path).name.lower() else "en"


def _mmbench_questions(path: Path, lang: str | None) -> list[Question]:
    from . import mmbench

    suffix = mmbench.SINGLE_PREDICTION_SUFFIX[mmbench_lang(path, lang)]
    questions = []
    for position, (row, image_id, _) in enumerate(iter_mmbench_images(path)):
        options = mmbench.options_of(row)
        prompt = mmbench.question_text(row)
        extra = {"round_id": 0, "options": options, "option_char": list(mmbench.OPTIONS[:len(options)])}
        questions.append(Question(position, plain(row["index"]), image_id, prompt + "\n" + suffix, prompt,
                                  _category(row), extra))
    return questions


def _category(row: Any) -> str | None:
    value = row.get("category")
    return None if is_none(value) else str(value)


def line_key(line: int, question_id: Any) -> str:
    """What an answer line is known by when a run resumes: its question's line and id (ids
    repeat; a question file edited between runs does not silently reuse answers)."""
    return json.dumps([line, question_id])


def answer_key(q: Question) -> str:
    """:func:`line_key` of a question."""
    return line_key(q.line, q.question_id)
