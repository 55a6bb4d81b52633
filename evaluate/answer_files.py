"""The files of an answer folder and the one process that writes them.

    OUT/.answer.lock       flock'd by the one ``masktok answer`` writing OUT (a second is refused)
    OUT/<spec>.plan.json   the batches, fixed before any work (evaluate/answer_plan.py)
    OUT/<spec>.jsonl       the answers: finished batches appended, then rewritten in question order
    OUT/<spec>.run.json    what made them and how fast (read by ``score sweep``)

Only the driver writes: a batch's lines are appended, flushed and fsync'd together once the
batch is answered, so a kill -9 at any moment leaves whole batches and at most one cut line.
A resume reads the file back tolerantly (:func:`read_answers`): a cut line is dropped, a
repeated (line, question_id) keeps its last copy (a batch answered again is appended after
the copy it replaces), and the file is rewritten in question order at the end of the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..schemas.durable import write_atomic
from ..schemas.errors import LockedError
from .questions import Question, answer_key, line_key

LOCK_NAME = ".answer.lock"


def spec_file(out: Path, spec: str) -> Path:
    """``OUT/<spec>.jsonl`` (the canonical spec string: ``cls,patch:36,obj:5.jsonl``)."""
    return Path(out) / f"{spec}.jsonl"


def run_file(out: Path, spec: str) -> Path:
    """``OUT/<spec>.run.json``: the settings and speed of the runs that made ``<spec>.jsonl``."""
    return Path(out) / f"{spec}.run.json"


@contextlib.contextmanager
def answer_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.answer.lock`` (an exclusive flock, released by the kernel however this
    process ends) for the whole run; LockedError in one line when another process holds it."""
    path = Path(out) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockedError(f"another masktok answer ({owner}) is writing to {out}: "
                              "wait for it, or give another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@dataclass
class ReadBack:
    """An answer file as a resume finds it: complete lines by :func:`answer_key`, and how
    many lines were dropped (cut by a crash, not JSON, without ``metadata.line``) or repeated."""

    answers: dict[str, dict[str, Any]]
    dropped: int = 0
    repeated: int = 0


def read_answers(path: Path) -> ReadBack:
    """The complete answer lines of ``path`` (see the module docstring); a missing file is empty."""
    back = ReadBack({})
    if not path.is_file():
        return back
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            answer = json.loads(text)
            key = line_key(answer["metadata"]["line"], answer["question_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            back.dropped += bool(text.strip())
            continue
        back.repeated += key in back.answers
        back.answers[key] = answer
    return back


def append_lines(fh: IO[str], lines: list[dict[str, Any]]) -> None:
    """Append one batch's lines in one write, flushed and fsync'd (a kill cuts at most the last)."""
    fh.write("".join(json.dumps(line) + "\n" for line in lines))
    fh.flush()
    os.fsync(fh.fileno())


def write_in_order(path: Path, questions: list[Question], done: dict[str, dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically: one line per question of ``done``, in question order."""
    write_atomic(path, "".join(json.dumps(answer) + "\n" for q in questions
                               if (answer := done.get(answer_key(q))) is not None).encode())


def read_run(path: Path) -> dict[str, Any]:
    """A run.json, or {} when there is none (or it is unreadable: it is only a record)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_run(path: Path, record: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(record, indent=1) + "\n").encode())
