"""Whether a file can be a ``torch.save`` checkpoint, told from its first bytes before torch
reads it. Given a file that is none (an HTML error page saved as ``.pth``, a download cut
short), ``torch.load(weights_only=True)`` answers that weights-only loading failed and that
``weights_only=False`` would likely succeed: wrong there, and unsafe advice. The loaders ask
here first and say what the file is instead."""

from __future__ import annotations

import zipfile
from pathlib import Path

_ZIP = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
_PICKLE = b"\x80"  # the legacy format: a pickle, protocol 2 or later


def not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file, or None when it may be one."""
    with open(path, "rb") as fh:
        head = fh.read(len(_ZIP))
    if not head:
        return "the file is empty"
    if head.startswith(_ZIP):
        return None if zipfile.is_zipfile(path) else "a zip archive cut short (an interrupted download?)"
    if head.startswith(_PICKLE):
        return None
    return "not a torch checkpoint (torch.save writes a zip archive, or a pickle before torch 1.6)"
