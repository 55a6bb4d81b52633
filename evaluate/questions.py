"""LLaVA-1.5's benchmark question files, read exactly as LLaVA's eval scripts read them.

Three formats, told apart by the file itself:

- JSON Lines (``model_vqa_loader.py``: VQAv2, GQA, VizWiz, TextVQA, POPE, MME; ``model_vqa.py``:
  MM-Vet): ``{"question_id", "image", "text", "category"?}`` per line. Question ids repeat by
  design (MME asks two questions per image and uses the image path as the id; TextVQA's ids are
  image ids), so a question is known by its **line**, never by its id alone.
- ScienceQA's JSON list (``model_vqa_science.py``): ``{"id", "conversations", "image"?}``;
  items without an image are answered without one (read by evaluate/scienceqa.py).
- MMBench's TSV (``model_vqa_mmbench.py``): one row per question, the picture as base64 inside
  the row; circular copies of a question at index + k x 1,000,000 carry the same picture. The
  cache holds one image per distinct picture, named by its content (``schemas/eval_files.embedded_image_id``);
  ``masktok plan`` decodes them into the job (read, prompted and scored by evaluate/mmbench.py).

This module reads the JSON Lines; a benchmark with a format of its own reads it in its module
and registers a ``benchmarks.QuestionFormat`` (ScienceQA, MMBench, and MM-Vet for its length).

Every question carries what the model is asked (``text``, without the image token), the answer
line's ``prompt`` as LLaVA writes it, and LLaVA-1.5's ``max_new_tokens`` for its kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError
from ..schemas.eval_files import file_format
from ..schemas.image_ids import lexical_reject
from .scoring import read_json_lines

#: LLaVA-1.5's generation length for the JSON Lines that model_vqa_loader.py reads (VQAv2, GQA,
#: VizWiz, TextVQA, POPE, MME); a benchmark that reads its file itself gives its own
#: (benchmarks.QuestionFormat: MM-Vet, ScienceQA and MMBench, 1024).
LOADER_MAX_NEW_TOKENS = 128


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
    """A benchmark file's questions, in file order, the kind of script that reads it ("loader"
    or the kind of a benchmarks.QuestionFormat) and LLaVA-1.5's max_new_tokens for it."""

    path: Path
    kind: str
    questions: list[Question]
    max_new_tokens: int = LOADER_MAX_NEW_TOKENS


def read_question_file(path: Path, lang: str | None = None, benchmark: str | None = None) -> QuestionFile:
    """The questions of a LLaVA-1.5 benchmark file (see the module docstring): read by the
    registered benchmark whose question format claims the file (benchmarks.QuestionFormat;
    the last registered first, so a new format can claim files a broader, older one would
    take: ScienceQA's takes any JSON list), else as model_vqa_loader.py's JSON Lines. ``lang`` picks MMBench's single-prediction
    suffix ("en" or "cn"; default: "cn" when the file name says ``_cn``, as LLaVA's
    mmbench_cn.sh passes it). ``benchmark`` (a module of benchmarks.REGISTRY) names the
    benchmark outright: its question format reads the file and gives the generation limit
    (model_vqa_loader.py's JSON Lines and 128 for a benchmark without one)."""
    from .benchmarks import REGISTRY, registered

    path = Path(path)
    if benchmark is not None:
        if benchmark not in REGISTRY:
            raise DataError(f"unknown benchmark {benchmark!r}: one of {', '.join(REGISTRY)}")
        formats = registered([benchmark]).formats
    else:
        formats = [next((fmt for fmt in reversed(registered().formats) if fmt.claims(path)), None)]
    if (fmt := formats[0] if formats else None) is not None:
        return _non_empty(QuestionFile(path, fmt.kind, fmt.read(path, lang), fmt.max_new_tokens))
    if file_format(path) != "jsonl":  # a format no registered benchmark reads
        raise DataError(f"{path}: no registered benchmark reads this question file")
    return _non_empty(QuestionFile(path, "loader", jsonl_questions(path)))


def _non_empty(qfile: QuestionFile) -> QuestionFile:
    if not qfile.questions:
        raise DataError(f"{qfile.path} holds no question")
    return qfile


def jsonl_questions(path: Path) -> list[Question]:
    """LLaVA's JSON Lines of ``{"question_id", "image", "text", "category"?}``, in file order."""
    questions = []
    for number, q in read_json_lines(path):
        try:
            text = q["text"]
            if not isinstance(text, str) or not isinstance(q["image"], str):
                raise TypeError("'text' and 'image' must be strings")
            refuse_image(q["image"], f"{path}, line {number}")
            questions.append(Question(len(questions), q["question_id"], q["image"], text, text, q.get("category")))
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}, line {number}: not a question ({type(exc).__name__}: {exc}); "
                            'expected {"question_id", "image", "text"}') from None
    return questions


def refuse_image(image: str, where: str) -> None:
    """DataError for an image path that ``masktok plan`` refuses (one that leaves the image
    root, an absolute path...): no cache holds it, and a question must not name files."""
    if (why := lexical_reject(image)) is not None:
        raise DataError(f"{where}: image {image!r} is refused ({why}), as `masktok plan` refuses it")


def line_key(line: int, question_id: Any) -> str:
    """What an answer line is known by when a run resumes: its question's line and id (ids
    repeat; a question file edited between runs does not silently reuse answers)."""
    return json.dumps([line, question_id])


def answer_key(q: Question) -> str:
    """:func:`line_key` of a question."""
    return line_key(q.line, q.question_id)
