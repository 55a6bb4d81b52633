"""Durable writes: every file of a job directory is replaced atomically, so a reader (or a
run killed halfway) sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (POSIX: the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
