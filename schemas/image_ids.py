"""Which image paths a corpus, a question file or an answer file may name: the one rule
that ``masktok plan`` (pipeline/corpus.py) and the evaluation's readers (evaluate/) share,
so that a path leaving the image root is refused the same way everywhere."""

from __future__ import annotations

import re
from pathlib import PurePosixPath


def lexical_reject(image_id: str) -> str | None:
    """Why a corpus path may not be used, judged from the string alone (None: fine)."""
    if not image_id or image_id.strip() != image_id:
        return "empty or padded with spaces"
    if "\x00" in image_id:
        return "contains a NUL byte"
    p = PurePosixPath(image_id)
    if p.is_absolute() or re.match(r"^[A-Za-z]:[\\/]", image_id):
        return "absolute path"
    if ".." in p.parts or ".." in image_id.split("\\"):
        return "'..' leaves the image root"
    if p.parts in ((), (".",)):
        return "names the image root itself"
    return None
