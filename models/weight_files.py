"""Whether a weights file can be what its name says, told from its first bytes (and, for
safetensors, its header) before a library reads it. Given a file that is none (an HTML error
page saved as ``.pth``, a download cut short), ``torch.load(weights_only=True)`` answers that
weights-only loading failed and that ``weights_only=False`` would likely succeed: wrong there,
and unsafe advice; safetensors answers "header too large". The loaders ask here first and say
what the file is instead."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

_ZIP = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
_PICKLE = b"\x80"  # the legacy format: a pickle, protocol 2 or later
_CUT = "cut short (an interrupted download?)"
#: safetensors' own bound on its JSON header
_MAX_SAFETENSORS_HEADER = 100_000_000


def weights_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be the weights its suffix names (``.safetensors``, else a
    ``torch.save`` file), or None when it may be."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    return _not_safetensors(path, size) if path.suffix == ".safetensors" else _not_torch(path)


def _not_torch(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(len(_ZIP))
    if head.startswith(_ZIP):
        return None if zipfile.is_zipfile(path) else f"a zip archive {_CUT}"
    if head.startswith(_PICKLE):
        return None
    return "not a torch checkpoint (torch.save writes a zip archive, or a pickle before torch 1.6)"


def _not_safetensors(path: Path, size: int) -> str | None:
    """A safetensors file is an 8-byte little-endian header length, a JSON header naming each
    tensor's byte range, then the bytes."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        text = fh.read(length) if 0 < length <= _MAX_SAFETENSORS_HEADER else b""
    try:
        header = json.loads(text)
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "not a safetensors file (no JSON header after its first 8 bytes)"
    return None if 8 + length + end <= size else f"a safetensors file {_CUT}"
