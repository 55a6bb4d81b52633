"""LLaVA conversation records joined to the cache by image_id.

A record is LLaVA's JSON: ``{"id", "image"?, "conversations": [{"from": "human"|"gpt",
"value": ...}, ...]}``. The join (by ``image`` == the cache's ``image_id``, exactly as
the corpus names it, which is how ``masktok plan`` builds the manifest):

- text-only records (no ``image`` key) pass through with no cache row: stage 2 trains on
  them; stage 1 (captions of images) skips and counts them;
- a record whose image is not in the cache (``missing``: never planned, e.g. a path the
  planner rejected), failed (status 2) or not processed yet (status 0, ``pending``) is
  skipped and counted;
- a record without a usable ``conversations`` list is skipped as ``invalid``.

``JoinCounts`` keeps the numbers; the trainer prints them and stores them in its state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ...schemas.errors import DataError
from ...schemas.record import Status


@dataclass
class JoinCounts:
    records: int = 0
    with_image: int = 0
    text_only: int = 0
    used: int = 0
    skipped_text_only: int = 0
    skipped_missing: int = 0
    skipped_failed: int = 0
    skipped_pending: int = 0
    skipped_invalid: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, why: str, what: str) -> None:
        setattr(self, f"skipped_{why}", getattr(self, f"skipped_{why}") + 1)
        shown = self.examples.setdefault(why, [])
        if len(shown) < 3:
            shown.append(what)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Example:
    """One training example: the record's turns and its cache row (None: text-only)."""

    conversations: list[dict[str, str]]
    row: int | None
    image_id: str | None


def load_records(path: Path) -> list[dict[str, Any]]:
    """Read a LLaVA JSON array; one-line DataError on a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no data file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of LLaVA records, got {type(data).__name__}")
    return data


def record_subset(records: Sequence[Any], fraction: float, seed: int = 0) -> list[Any]:
    """The deterministic ``fraction`` of ``records`` (``masktok train --fraction``; the paper
    pretrains on 90% of LLaVA-Pretrain, 4.2, and names no subset: this one is masktok's).

    Each record is ranked by SHA-256 of ``seed`` and its ``id`` and ``image`` (its JSON when it
    has neither); the ``round(fraction x N)`` first in that ranking are kept, in file order. So
    the subset is the same on every run and machine, whatever the file's order, and a smaller
    fraction is a subset of a larger one with the same seed. (558,128 records: 6.5 s.)"""
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction must be in (0, 1], not {fraction}")
    if fraction == 1:
        return list(records)

    def rank(pos: int) -> tuple[bytes, int]:
        rec = records[pos]
        key = [rec.get("id"), rec.get("image")] if isinstance(rec, dict) else None
        text = json.dumps([seed, key if key and key != [None, None] else rec], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).digest(), pos

    keep = sorted(range(len(records)), key=rank)[:round(fraction * len(records))]
    return [records[pos] for pos in sorted(keep)]


def _valid_turns(rec: Any) -> list[dict[str, str]] | None:
    if not isinstance(rec, dict):
        return None
    turns = rec.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    if not all(isinstance(t, dict) and t.get("from") in ("human", "gpt") and isinstance(t.get("value"), str)
               for t in turns):
        return None
    return turns


def join_records(records: Sequence[Any], image_ids: Sequence[str], status: Sequence[int],
                 keep_text_only: bool = True) -> tuple[list[Example], JoinCounts]:
    """Join records to cache rows (``image_ids``/``status`` indexed by manifest row)."""
    row_of = {iid: i for i, iid in enumerate(image_ids)}
    counts = JoinCounts(records=len(records))
    out: list[Example] = []
    for pos, rec in enumerate(records):
        turns = _valid_turns(rec)
        if turns is None:
            counts.skip("invalid", f"record {pos}")
            continue
        image = rec.get("image")
        if image is None:
            counts.text_only += 1
            if keep_text_only:
                out.append(Example(turns, None, None))
            else:
                counts.skip("text_only", str(rec.get("id", pos)))
            continue
        counts.with_image += 1
        if not isinstance(image, str):
            counts.skip("invalid", f"record {pos}")
            continue
        row = row_of.get(image)
        if row is None:
            counts.skip("missing", image)
        elif status[row] == Status.FAILED:
            counts.skip("failed", image)
        elif status[row] != Status.OK:
            counts.skip("pending", image)
        else:
            out.append(Example(turns, row, image))
    counts.used = len(out)
    return out, counts
