"""What every benchmark scorer shares: the answer file as LLaVA writes it, and the result a
scorer returns (:class:`BenchScore`), printed as a table or as one JSON object.

The rule every scorer follows: a question (or label) without an answer is reported and counted
wrong, an answer that pairs with no question is reported and not scored, and pairing never
depends on line positions alone (LLaVA's position-based scripts silently mis-pair once one
answer is missing). Wrong input is a ``DataError``: one line, exit status 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schemas.errors import DataError


#: The ``metadata`` key of an answer line ``masktok answer`` wrote without asking the model
#: (its text empty): why, the state of the question's image.
UNANSWERED = "unanswered"


@dataclass(frozen=True)
class AnswerLine:
    """One line of a LLaVA answer file (``model_vqa*.py``'s format)."""

    number: int  # 1-based line number in the file
    question_id: Any  # as written (int or str)
    text: str
    prompt: str | None
    row: dict[str, Any]  # the whole object (round_id, options, metadata, ...)

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.row.get("metadata")
        return meta if isinstance(meta, dict) else {}


def read_json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line; DataError naming file and line if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg}, column {exc.colno})") from None
    return rows


def load_json(path: Path) -> Any:
    """A JSON file's value; DataError naming the file if it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None


def read_answer_file(path: Path) -> list[AnswerLine]:
    """Every answer of a LLaVA answer file, in file order. DataError for a file that is not one
    (a line that is no object with ``question_id`` and a string ``text``), or holds no answer."""
    answers = []
    for number, row in read_json_lines(path):
        if not isinstance(row, dict) or "question_id" not in row:
            raise DataError(f"{path}:{number}: not an answer line (expected a JSON object with "
                            "question_id and text, as LLaVA's model_vqa scripts write)")
        if not isinstance(row.get("text"), str):
            raise DataError(f"{path}:{number}: answer has no text")
        prompt = row.get("prompt")
        answers.append(AnswerLine(number, row["question_id"], row["text"],
                                  prompt if isinstance(prompt, str) else None, row))
    if not answers:
        raise DataError(f"{path}: no answers")
    return answers


def count_unanswered(path: Path) -> int:
    """The answer lines of ``path`` that ``masktok answer`` wrote empty (``metadata.unanswered``)."""
    return sum(isinstance(row, dict) and isinstance(row.get("metadata"), dict) and UNANSWERED in row["metadata"]
               for _, row in read_json_lines(path))


def id_key(question_id: Any) -> str:
    """A question id as a dict key: 1 and "1" are the same question (LLaVA's files mix both)."""
    return str(question_id)


@dataclass
class BenchScore:
    """A scorer's result.

    ``score`` is the number the paper reports for the benchmark (a percentage, or MME's
    perception points); ``extra`` holds other headline numbers (MME's ``cognition``,
    ScienceQA's ``all``); ``parts`` the breakdown (per category, subtask, ability). ``scored``
    counts the questions scored, the ``missing`` ones among them (counted wrong); ``unpaired``
    lists answers that belong to no question (not scored); ``unanswered`` counts the answer
    lines ``masktok answer`` wrote empty because the question's image was missing or failed
    (``metadata.unanswered``; scored as the empty answers they are).
    """

    benchmark: str
    score: float | None
    parts: dict[str, Any] = field(default_factory=dict)
    scored: int = 0
    missing: list[Any] = field(default_factory=list)
    unpaired: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    unanswered: int = 0

    def to_dict(self, examples: int = 10) -> dict[str, Any]:
        """JSON-ready: benchmark, score, the extra headline numbers, parts, counts and a few
        example ids of what is missing or unpaired."""
        return {"benchmark": self.benchmark, "score": self.score, **self.extra, "parts": self.parts,
                "counts": {"scored": self.scored, "missing": len(self.missing), "unpaired": len(self.unpaired),
                           "unanswered": self.unanswered},
                "missing_examples": [_jsonable(m) for m in self.missing[:examples]],
                "unpaired_examples": [_jsonable(u) for u in self.unpaired[:examples]]}

    def warnings(self, examples: int = 5) -> list[str]:
        """One line per kind of leftover (none when everything paired)."""
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} question(s) without an answer, counted wrong "
                         f"(e.g. {_examples(self.missing, examples)})")
        if self.unanswered:
            lines.append(f"{self.unanswered} answer(s) written empty, their image missing or failed "
                         "(metadata.unanswered), scored as empty answers")
        if self.unpaired:
            lines.append(f"{len(self.unpaired)} answer(s) of no question, not scored "
                         f"(e.g. {_examples(self.unpaired, examples)})")
        return lines


def _jsonable(item: Any) -> Any:
    return list(item) if isinstance(item, tuple) else item


def _examples(items: Sequence[Any], n: int) -> str:
    shown = ", ".join("/".join(map(str, i)) if isinstance(i, tuple) else repr(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")


def require_pairs(scored_answers: int, answers_path: Path, labels: str) -> None:
    """DataError when not one answer of ``answers_path`` paired: the answer file belongs to
    another question set, or the labels to another benchmark."""
    if scored_answers == 0:
        raise DataError(f"no answer of {answers_path} pairs with {labels} (an answer file of another "
                        "question set, or labels of another benchmark?)")


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage; "-" for an undefined (None) metric."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def format_rows(rows: Iterable[Sequence[str]], left: set[int] = frozenset({0})) -> str:
    """A plain text table: columns in ``left`` left-aligned, the others right-aligned."""
    rows = [tuple(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def pair_with_questions(answers: Sequence[AnswerLine], questions: Sequence[Any]) -> tuple[dict[int, AnswerLine], list[AnswerLine]]:
    """Each answer to its question line (``questions``: evaluate/questions.py's Question), and
    the answers of no question. An answer names its question by id and, where ids repeat (MME,
    TextVQA), by its ``prompt``: the k-th answer with an (id, prompt) takes the k-th question with
    them, so a missing answer never shifts the others. An answer without a prompt pairs by id
    alone, in the same way."""
    slots: dict[tuple[str, str | None], list[int]] = {}
    for q in questions:
        slots.setdefault((id_key(q.question_id), q.prompt), []).append(q.line)
        slots.setdefault((id_key(q.question_id), None), []).append(q.line)
    taken: dict[int, AnswerLine] = {}
    unpaired = []
    for a in answers:
        free = [line for line in slots.get((id_key(a.question_id), a.prompt), []) if line not in taken]
        if free:
            taken[free[0]] = a
        else:
            unpaired.append(a)
    return taken, unpaired
