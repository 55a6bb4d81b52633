"""Durable writes: every file of a job directory is replaced atomically, so a reader (or a
run killed halfway) sees the old file or the new one, never a torn one.

On a local disk: a temp file, fsync, rename. On object storage (a URL JOBDIR,
schemas/storage.py) an object is written by one PUT (or one multipart upload, which is
visible only once complete): it appears whole or not at all, and is durable when the PUT
returns, so there is no temp name, no fsync and nothing to sweep.
"""

from __future__ import annotations

import os
from pathlib import Path

from .storage import is_remote

#: Temp names of :func:`write_atomic`: ``.<name>.tmp-<pid>`` beside the file.
TEMP_GLOB = ".*.tmp-*"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: a reader sees the old file or the new one (the
    folder is made if need be; on object storage: one PUT, :func:`put_object`).

    A failed write (a full disk, a quota) removes its temp file before the error goes on
    (an OSError naming ``path``), so nothing half-written stays behind; a process killed mid-write leaves one, which the
    next run sweeps (:func:`sweep_temp_files`).
    """
    if is_remote(path):
        put_object(path, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
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


def put_object(path, data: bytes) -> None:
    """One PUT of ``data`` at ``path`` (a UPath). Whatever the store refuses (a missing
    bucket, a denied PUT, a network error) comes back as an OSError naming ``path``."""
    try:
        path.fs.pipe_file(path.path, data)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    except Exception as exc:  # botocore/aiohttp errors that s3fs does not translate
        raise OSError(None, f"{type(exc).__name__}: {exc}", str(path)) from exc


def sweep_temp_files(*folders: Path) -> list[Path]:
    """Remove the temp files a killed writer left in ``folders``; returns them. Only under
    the job's run lock: then no live process of this job is writing them. Object storage
    has none (:func:`put_object`)."""
    swept = [p for folder in folders if not is_remote(folder) and folder.is_dir() for p in folder.glob(TEMP_GLOB)]
    for path in swept:
        path.unlink(missing_ok=True)
    return swept


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (POSIX: the directory entry itself); nothing to
    do on object storage."""
    if is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
