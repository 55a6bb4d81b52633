"""Where a job directory lives: a local folder, or an fsspec URL on object storage.

A local JOBDIR is a :class:`pathlib.Path`; ``s3://``, ``gs://`` (any fsspec protocol whose
library is installed) is a ``upath.UPath``, which speaks the same path API through fsspec,
so the code that names and reads the job's files (schemas/jobdir.py, schemas/commits.py,
the views, the trainer) is the same for both. What differs is here and in two other
places: how a file is written (schemas/durable.py: one PUT, no rename), and how two
drivers are kept apart (pipeline/lock.py: an object created with a conditional write).

Credentials and endpoints come from the environment, as for any client of that storage
(``AWS_*``, ``~/.aws/config``, ``AWS_ENDPOINT_URL`` for an S3-compatible server): every
process of a run, Ray's workers included, opens the URL with no options of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import StorageError


#: No cached listings: other processes (the writers, another command) add and remove a
#: job's objects, and a listing cached by s3fs/gcsfs/adlfs would not show it.
LISTING_OPTIONS = {p: {"use_listings_cache": False} for p in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")}


def is_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value


def job_root(value: str | Path | Any) -> Path | Any:
    """A JOBDIR given as text or a path: ``Path`` when local (``file://`` included), a
    ``UPath`` for an object-storage URL. StorageError when the URL's protocol is unknown or
    its fsspec library is not installed."""
    if is_remote(value):
        return value
    text = str(value)
    if not is_url(text):
        return Path(text)
    protocol, rest = text.split("://", 1)
    if protocol in ("file", "local"):
        return Path(rest)
    import fsspec
    from upath import UPath

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise StorageError(f"{text}: the {protocol}:// file system needs a library that is not installed "
                           f"({exc}); e.g. `pip install s3fs` for s3://, `pip install gcsfs` for gs://") from None
    except ValueError:
        raise StorageError(f"{text}: unknown protocol {protocol}:// (fsspec knows no such file system)") from None
    if protocol == "memory":
        raise StorageError(f"{text}: memory:// lives in one process, and a run's writers are other processes; "
                           "give a local folder or an object store (s3://, gs://)")
    return UPath(text, **LISTING_OPTIONS.get(protocol, {}))


def is_remote(path: object) -> bool:
    """True for a JOBDIR (or a path inside one) on object storage."""
    return not isinstance(path, (str, Path)) and hasattr(path, "fs") and hasattr(path, "protocol")


def check_bucket(root: Any) -> None:
    """StorageError unless ``root``'s bucket exists and can be listed (a plan on a missing
    bucket says so, instead of failing at its first write)."""
    bucket = str(root.path).split("/", 1)[0]
    try:
        ok = root.fs.exists(bucket)
    except OSError as exc:
        raise StorageError(f"{root}: cannot reach bucket {bucket!r} ({exc})") from None
    if not ok:
        raise StorageError(f"{root}: bucket {bucket!r} does not exist (or these credentials cannot see it); "
                           "create it first")


def open_zarr(path: Path | Any, mode: str) -> Any:
    """``zarr.open_group`` of a local folder or of a URL (through zarr's FsspecStore)."""
    import zarr

    if not is_remote(path):
        return zarr.open_group(path, mode=mode)
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(str(path), storage_options=dict(path.storage_options), read_only=mode == "r")
    return zarr.open_group(store, mode=mode)


def tiny_models_cache() -> Path:
    """Where the tiny presets are built for a job with no local folder (a URL JOBDIR,
    `masktok ask`): ``$XDG_CACHE_HOME/masktok/tiny-models`` (default ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "masktok" / "tiny-models"


def remove_tree(path: Path | Any) -> None:
    """Remove a folder (or file) of a job directory, wherever it lives; nothing if absent."""
    import shutil

    if is_remote(path):
        if path.fs.exists(path.path):
            path.fs.rm(path.path, recursive=True)
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
