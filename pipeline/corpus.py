"""Reading corpora: the LLaVA conversation JSON files, LLaVA eval question files and plain
image folders.

A LLaVA file is one JSON array of up to a million records (about 1 GB for the 665K
instruct mix). It is read as a stream: the array is cut into records with the standard
library's decoder, one record at a time, so memory holds one chunk of text and the few
fields planning keeps, never the whole document. A syntax error names its line and column.

An eval question file (LLaVA-1.5 ``playground/data/eval``) comes in three formats
(schemas/eval_files.py tells them apart; evaluate/questions.py reads the questions): JSON Lines (POPE, MME, GQA, VQAv2, VizWiz, TextVQA, MM-Vet), one
question object per line, read one line at a time, whose corpus rows are 0-based line indexes
(line number - 1), so ``lines[row]`` finds the question even where blank lines were skipped;
ScienceQA's JSON list, read as a LLaVA conversation file (text-only items need no image); and
MMBench's TSV, whose pictures are inside its rows: planning decodes each distinct picture once
into the job (``JOBDIR/images/``, named by content) and its corpus rows are row positions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from ..schemas.errors import CorpusError
from ..schemas.image_ids import lexical_reject  # noqa: F401 (the rule plan applies, defined once)
from ..stages.decode import IMAGE_SUFFIXES

_WS = re.compile(r"[ \t\n\r]*")
EXAMPLES_KEPT = 5


@dataclass
class CorpusScan:
    """What a corpus holds, before any file-system check."""

    records_read: int = 0
    text_only: int = 0
    invalid: int = 0
    invalid_examples: list[str] = field(default_factory=list)
    rejected: int = 0
    rejected_examples: list[str] = field(default_factory=list)
    references: dict[str, list[int]] = field(default_factory=dict)  # image_id -> corpus rows

    def note_invalid(self, where: str, reason: str) -> None:
        """Count a record that is skipped; ``where`` names it for the report ("record 3")."""
        self.invalid += 1
        if len(self.invalid_examples) < EXAMPLES_KEPT:
            self.invalid_examples.append(f"{where}: {reason}")

    def note_rejected(self, image_id: str, reason: str) -> None:
        self.rejected += 1
        if len(self.rejected_examples) < EXAMPLES_KEPT:
            self.rejected_examples.append(f"{image_id!r} ({reason})")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> CorpusError:
    return CorpusError(f"{path}: not UTF-8 text ({exc.reason})")


class _ArrayStream:
    """Cursor over a JSON text read in chunks; keeps line/column for error messages."""

    def __init__(self, fh: TextIO, path: Path, chunk_chars: int, on_read: Callable[[int], None]):
        self.fh, self.path, self.chunk, self.on_read = fh, path, chunk_chars, on_read
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.col0 = 1, 0  # line and column of buf[0]

    def fill(self) -> bool:
        """Drop what was consumed and append one chunk; False at end of file."""
        done = self.buf[: self.pos]
        newline = done.rfind("\n")
        self.line += done.count("\n")
        self.col0 = len(done) - newline - 1 if newline >= 0 else self.col0 + len(done)
        try:
            more = self.fh.read(self.chunk)
        except UnicodeDecodeError as exc:
            raise _not_utf8(self.path, exc) from None
        self.on_read(len(more))
        self.buf, self.pos = self.buf[self.pos :] + more, 0
        self.eof = not more
        return bool(more)

    def skip_ws(self) -> str:
        """Skip whitespace; return the next character ('' at end of file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def where(self, pos: int) -> str:
        newline = self.buf.rfind("\n", 0, pos)
        line = self.line + self.buf.count("\n", 0, pos)
        col = pos - newline if newline >= 0 else self.col0 + pos + 1
        return f"line {line}, column {col}"

    def fail(self, pos: int, what: str) -> CorpusError:
        return CorpusError(f"{self.path}: malformed JSON at {self.where(pos)}: {what}")

    def value(self, decoder: json.JSONDecoder) -> Any:
        while True:
            try:
                obj, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise self.fail(exc.pos, exc.msg) from None
                self.fill()  # perhaps the record goes on in the next chunk: decode again
                continue
            after = _WS.match(self.buf, end).end()
            if not self.eof and (after == len(self.buf) or self.buf[after] not in ",]"):
                # A number cut by the chunk end decodes as a shorter number ("-1.5" of
                # "-1.5e-7"): unless a separator follows, decode again with more text.
                self.fill()
                continue
            self.pos = end
            return obj


def iter_json_array(path: Path, chunk_chars: int = 1 << 24, on_read: Callable[[int], None] = lambda n: None) -> Iterator[Any]:
    """Yield the elements of the JSON array in ``path`` one at a time."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig") as fh:
        s = _ArrayStream(fh, path, chunk_chars, on_read)
        first = s.skip_ws()
        if first == "":
            raise CorpusError(f"{path}: the file is empty")
        if first != "[":
            raise s.fail(s.pos, f"expected a JSON array of records, found {first!r}")
        s.pos += 1
        if s.skip_ws() == "]":
            s.pos += 1
        else:
            while True:
                if s.skip_ws() == "":
                    raise s.fail(s.pos, "the array is not closed")
                yield s.value(decoder)
                sep = s.skip_ws()
                if sep == "]":
                    s.pos += 1
                    break
                if sep != ",":
                    raise s.fail(s.pos, "expected ',' or ']' after a record")
                s.pos += 1
        if s.skip_ws() != "":
            raise s.fail(s.pos, "extra data after the array")


def _not_an_object(record: Any) -> str:
    return f"must be an object, got {type(record).__name__}"


def _add_image(scan: CorpusScan, row: int, where: str, image: Any) -> None:
    """The rule every LLaVA kind applies to a record's ``image``: not a string is an invalid
    record (``where`` names it), a path ``lexical_reject`` refuses is a rejected path, any
    other is an image id referenced from corpus row ``row`` (one manifest row however many
    records name it)."""
    if not isinstance(image, str):
        scan.note_invalid(where, f"'image' must be a string, got {type(image).__name__}")
        return
    reason = lexical_reject(image)
    if reason:
        scan.note_rejected(image, reason)
        return
    scan.references.setdefault(image, []).append(row)


def scan_llava(path: Path, on_read: Callable[[int], None] = lambda n: None) -> CorpusScan:
    """Read a LLaVA-Pretrain or LLaVA-Instruct JSON file into a CorpusScan."""
    scan = CorpusScan()
    for row, record in enumerate(iter_json_array(path, on_read=on_read)):
        scan.records_read += 1
        where = f"record {row}"
        if not isinstance(record, dict):
            scan.note_invalid(where, _not_an_object(record))
            continue
        if not isinstance(record.get("conversations"), list):
            scan.note_invalid(where, "no 'conversations' list")
            continue
        if "image" not in record:
            scan.text_only += 1
            continue
        _add_image(scan, row, where, record["image"])
    return scan


def iter_json_lines(path: Path, on_read: Callable[[int], None] = lambda n: None) -> Iterator[tuple[int, Any]]:
    """Yield (line number, value) for each non-blank line of the JSON Lines file ``path``,
    one line in memory at a time; a line that is not one JSON value is a CorpusError."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig") as fh:
        try:
            for number, line in enumerate(fh, 1):
                on_read(len(line))
                if _WS.fullmatch(line):
                    continue
                try:
                    value = decoder.decode(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(
                        f"{path}: malformed JSON at line {number}, column {exc.colno}: {exc.msg}"
                    ) from None
                yield number, value
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None


def scan_llava_eval(path: Path, on_read: Callable[[int], None] = lambda n: None,
                    images_dir: Path | None = None) -> CorpusScan:
    """Read a LLaVA-1.5 eval question file into a CorpusScan, in whichever of its formats
    (module docstring). JSON Lines: every question needs an image, so a line that is not an
    object or has no ``image`` is invalid; ``question_id`` and ``text`` are not looked at.
    MMBench's TSV: its pictures are written into ``images_dir`` (unused by the other formats)."""
    from ..schemas.eval_files import file_format
    from ..schemas.errors import DataError

    try:
        fmt = file_format(path)
        if fmt == "scienceqa":
            return scan_llava(path, on_read=on_read)
        if fmt == "mmbench":
            if images_dir is None:
                raise CorpusError(f"{path}: MMBench's pictures are inside the TSV and need a folder to go to")
            return scan_embedded_images(path, images_dir)
    except DataError as exc:
        raise CorpusError(str(exc)) from None
    scan = CorpusScan()
    for number, record in iter_json_lines(path, on_read=on_read):
        scan.records_read += 1
        where = f"line {number}"
        if not isinstance(record, dict):
            scan.note_invalid(where, _not_an_object(record))
        elif "image" not in record:
            scan.note_invalid(where, "no 'image'")
        else:
            _add_image(scan, number - 1, where, record["image"])
    return scan


def scan_embedded_images(path: Path, images_dir: Path) -> CorpusScan:
    """MMBench's TSV: each distinct picture written once to ``images_dir/<content id>``
    (atomically; an existing file of that name already holds those bytes), its rows referenced."""
    from ..schemas.eval_files import iter_mmbench_images
    from ..schemas.durable import write_atomic

    scan = CorpusScan()
    for position, (_, image_id, data) in enumerate(iter_mmbench_images(path)):
        scan.records_read += 1
        if data is not None and not (images_dir / image_id).is_file():
            write_atomic(images_dir / image_id, data)
        scan.references.setdefault(image_id, []).append(position)
    return scan


def scan_folder(root: Path) -> CorpusScan:
    """Every image file under ``root`` (by suffix, any case); symlinked folders are not
    followed and symlinked files are checked later like any other path."""
    scan = CorpusScan()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                scan.records_read += 1
                scan.references[str(rel_dir / name) if rel_dir.parts else name] = []
    return scan
