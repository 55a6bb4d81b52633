"""The file formats of LLaVA-1.5's benchmark question files, as far as planning needs them:
which format a file is, and the pictures MMBench's TSV carries inside its rows.

Planning (pipeline/corpus.py, ``--corpus llava-eval``) and evaluation (evaluate/questions.py,
evaluate/mmbench.py) both read these files; this module is their shared, light part, kept
below both so that planning never imports evaluation. What a question *means* (its prompt,
its answer rule) stays in evaluate/.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError


def carries_pictures(path: Path) -> bool:
    """MMBench's TSV (told by its suffix) holds its pictures; the other formats name image files."""
    return Path(path).suffix.lower() == ".tsv"


def file_format(path: Path) -> str:
    """"jsonl", "scienceqa" (a JSON list) or "mmbench" (a TSV), from the file's name and first
    character; DataError for anything else."""
    path = Path(path)
    if carries_pictures(path):
        return "mmbench"
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as fh:  # the reader names bad bytes
            head = fh.read(4096).lstrip()
    except OSError as exc:
        raise DataError(f"cannot read the question file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if head.startswith("["):
        return "scienceqa"
    if head.startswith("{") or head.startswith("\ufffd"):  # bad bytes: the line reader names them
        return "jsonl"
    raise DataError(f"{path} is no LLaVA question file (JSON Lines of questions, ScienceQA's JSON "
                    "list, or MMBench's .tsv)")


def plain(value: Any) -> Any:
    """A pandas scalar as plain Python (numpy int64 -> int), so it writes as JSON."""
    return value.item() if hasattr(value, "item") else value


def embedded_image_id(data: bytes) -> str:
    """The cache id of a picture carried inside a question file: its content's SHA-256 (first 20
    hex digits) and the suffix of its format, so every copy of one picture is one image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            suffix = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}.get(
                im.format or "", ".img")
    except (UnidentifiedImageError, OSError):
        suffix = ".img"  # planned all the same: the decode stage records it as a failed image
    return hashlib.sha256(data).hexdigest()[:20] + suffix


def decode_base64_image(value: Any, where: str) -> bytes:
    """A TSV cell's base64 picture as bytes; DataError naming the row when it is none."""
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise DataError(f"{where}: the image is not base64 ({exc})") from None


def iter_mmbench_images(path: Path) -> Iterator[tuple[Any, str, bytes | None]]:
    """(row, image id, picture bytes) of each TSV row in file order; the bytes only where a
    picture first appears (None for its copies), so each is decoded and written once."""
    table = read_mmbench_table(path)
    if "image" not in table.columns:
        raise DataError(f"{path}: MMBench's question TSV needs an 'image' column (base64 pictures)")
    seen: dict[str, str] = {}  # the base64 text -> its id (copies repeat the same text)
    for position, (_, row) in enumerate(table.iterrows()):
        where = f"{path}, row {position + 1} (index {plain(row['index'])})"
        if is_none(row["image"]):
            raise DataError(f"{where}: no image")
        b64 = str(row["image"])
        if b64 in seen:
            yield row, seen[b64], None
            continue
        data = decode_base64_image(b64, where)
        seen[b64] = image_id = embedded_image_id(data)
        yield row, image_id, data


def read_mmbench_table(path: Path) -> Any:
    """The TSV as a pandas DataFrame, exactly as LLaVA reads it (``pd.read_table``, default NA
    handling). DataError for a file pandas cannot read, or one without ``index`` and
    ``question`` columns, or whose ``index`` is not unique integers."""
    import pandas as pd

    try:
        table = pd.read_table(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read the MMBench TSV {path}: {reason}") from None
    lacking = [c for c in ("index", "question") if c not in table.columns]
    if lacking:
        raise DataError(f"{path} is no MMBench TSV: no {' or '.join(map(repr, lacking))} column "
                        f"(columns: {', '.join(map(str, table.columns[:8]))})")
    if not pd.api.types.is_integer_dtype(table["index"]):
        raise DataError(f"{path}: MMBench's 'index' column must hold integers")
    repeated = table["index"][table["index"].duplicated()]
    if len(repeated):
        raise DataError(f"{path}: index {int(repeated.iloc[0])} is on more than one row")
    return table


def is_none(value: Any) -> bool:
    """LLaVA's is_none: None, NaN, or the text "nan"/"none" (any case). (A NumPy NaN is none
    too; LLaVA only meets Python floats, as ``iterrows`` yields them.)"""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")
