"""Durable writes: every file of a job directory is replaced atomically, so a reader (or a
run killed halfway) sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path

#: Temp names of :func:`write_atomic`: ``.<name>.tmp-<pid>`` beside the file.
TEMP_GLOB = ".*.tmp-*"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: a reader sees the old file or the new one.

    A failed write (a full disk, a quota) removes its temp file before the error goes on
    (an OSError naming ``path``), so nothing half-written stays behind; a process killed mid-write leaves one, which the
    next run sweeps (:func:`sweep_temp_files`).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write() names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def sweep_temp_files(*folders: Path) -> list[Path]:
    """Remove the temp files a killed writer left in ``folders``; returns them. Only under
    the job's run lock: then no live process of this job is writing them."""
    swept = [p for folder in folders if folder.is_dir() for p in folder.glob(TEMP_GLOB)]
    for path in swept:
        path.unlink(missing_ok=True)
    return swept


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (POSIX: the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
