"""The plan of an ``answer`` run: which questions are decoded together, fixed before any work.

``OUT/<spec>.plan.json`` is written once, before the first batch, and read by every resume:

    {"version": 1, "spec": ..., "settings": {...}, "fingerprint": "...", "batches": [[line, ...], ...]}

Batches group questions of similar prompt length (their tokenised text; text-only questions,
which have no visual tokens, apart from those with an image), so a batch pads little, and
are listed longest first, so the longest work starts first and no replica is left with it
at the end. Membership is a function of the questions, the tokenizer and the batch size
alone: not of the number of workers, of restarts, or of the order batches finish in. A
question's answer therefore comes from the same batch whoever runs it, and the file is the
same bytes however the run went (greedy answers are batch-independent in exact arithmetic;
fixing the batches makes them so in floating point too).

``settings`` is everything that changes an answer (checkpoint, generation settings, dtype,
batch size, the questions themselves); its fingerprint is compared on every resume, and a
resume with other settings is refused in one line rather than mixing answers. The device is
not part of it: a run started on one GPU may go on on another. An answer file found without a
plan (written by a masktok before plans) is taken as made under the current settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schemas.durable import write_atomic
from ..schemas.errors import DataError
from .questions import Question

PLAN_VERSION = 1


def plan_file(out: Path, spec: str) -> Path:
    """``OUT/<spec>.plan.json``, beside ``OUT/<spec>.jsonl``."""
    return Path(out) / f"{spec}.plan.json"


def questions_digest(questions: list[Question]) -> str:
    """A hash of what the model is asked, line by line (an edited question file is another plan)."""
    h = hashlib.sha256()
    for q in questions:
        h.update(json.dumps([q.line, q.question_id, q.image, q.text], sort_keys=True).encode())
    return h.hexdigest()[:16]


def digest(text: str) -> str:
    """A short sha256 of ``text`` (a checkpoint's state.json in the settings)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(settings: dict[str, Any]) -> str:
    return digest(json.dumps(settings, sort_keys=True))


def plan_batches(questions: list[Question], prompt_length: Callable[[Question], int],
                 batch_size: int) -> list[list[int]]:
    """Batches of question lines (see the module docstring): sorted by (has an image, prompt
    length, line), cut every ``batch_size``, longest batch first (ties: lower first line)."""
    order = sorted(questions, key=lambda q: (q.image is not None, prompt_length(q), q.line))
    batches = [[q.line for q in order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
    lengths = {q.line: prompt_length(q) for q in questions}
    return sorted(batches, key=lambda b: (-max(lengths[line] for line in b), b[0]))


@dataclass(frozen=True)
class AnswerPlan:
    """The batches of one spec's answer file and the settings they were planned under."""

    spec: str
    settings: dict[str, Any]
    batches: list[list[int]]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, "spec": self.spec, "settings": self.settings,
                           "fingerprint": self.fingerprint, "batches": self.batches}) + "\n"


def settle_plan(path: Path, wanted: AnswerPlan) -> AnswerPlan:
    """The plan at ``path`` when it was made under ``wanted``'s settings; ``wanted``, written
    atomically, when there is none; DataError (one line) when it was made under others."""
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            have = AnswerPlan(old["spec"], old["settings"], old["batches"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} is not an answer plan: delete it to plan again "
                            "(the answers beside it are kept when the settings are the same)") from None
        if have.fingerprint != wanted.fingerprint:
            diff = [f"{k} {have.settings.get(k)!r} (now {v!r})" for k, v in wanted.settings.items()
                    if have.settings.get(k) != v]
            raise DataError(f"{path.parent / (wanted.spec + '.jsonl')} was answered with other settings: "
                            f"{', '.join(diff)}; rerun with those or give another --out")
        return have
    write_atomic(path, wanted.to_json().encode())
    return wanted
