"""A write the storage refused (a full disk, a quota, a read-only file system, a denied
permission, an object store's refusal) as one line: what was being written, what is safe,
what to do (issue 34; docs/reliability.md).

Every command that writes wraps its writing in :func:`refused_writes`; the writes below it
stay plain (or go through schemas/durable.py, which removes its temp file first). The
libraries a command writes with do not all raise an OSError: ``torch.save`` raises a
RuntimeError whose context is the OSError (when it writes to a Python file object:
models.registry.save_torch), safetensors a ``SafetensorError`` whose message ends with Rust's
``(os error 28)``. :func:`refusal_of` finds the refusal in any of them.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import StorageError

#: errno -> what to do. A refusal is one of these, a PermissionError, or any OSError
#: naming an object-store URL (schemas/durable.put_object: whatever the store refused).
WHAT_TO_DO = {
    errno.ENOSPC: "free space (or raise the quota) and run again",
    errno.EDQUOT: "free space (or raise the quota) and run again",
    errno.EROFS: "the file system is read-only: give a writable place (or remount it) and run again",
    errno.EACCES: "give a place this user may write (or fix its permissions) and run again",
    errno.EPERM: "give a place this user may write (or fix its permissions) and run again",
}
STORE_ADVICE = "fix what the object store refused (bucket, policy, credentials, network) and run again"
#: How Rust's std::io::Error (safetensors, tokenizers) prints an errno.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class WriteRefusedError(StorageError):
    """A write the storage refused: one line naming the file, what is safe, what to do."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (each once), and
    those it carries per process (torch.distributed.checkpoint's ``CheckpointException``
    holds each rank's failure in ``failures``, as a tuple ``(exc, traceback)``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):
            todo += [f[0] for f in failures.values() if isinstance(f, tuple) and isinstance(f[0], BaseException)]


def refusal_of(exc: BaseException) -> OSError | None:
    """The storage's refusal behind ``exc`` (an OSError), or None when ``exc`` is no refusal."""
    for current in _chain(exc):
        if isinstance(current, OSError):
            if (isinstance(current, PermissionError) or current.errno in WHAT_TO_DO
                    or "://" in str(current.filename or "")):
                return current
        elif (found := _RUST_OS_ERROR.search(str(current))) and int(found.group(1)) in WHAT_TO_DO:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
    return None


def what_to_do(exc: OSError) -> str:
    """The advice for a refusal (``exc`` from :func:`refusal_of`)."""
    if exc.errno in WHAT_TO_DO:
        return WHAT_TO_DO[exc.errno]
    if "://" in str(exc.filename or ""):
        return STORE_ADVICE
    if isinstance(exc, PermissionError):  # without an errno: an object store's 403
        return WHAT_TO_DO[errno.EACCES]
    return "fix the storage it names and run again"


def describe_refusal(what: str, exc: OSError, safe: str) -> str:
    """One line: ``could not write WHAT (FILE): REASON; SAFE; WHAT TO DO``."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"could not write {what}{where}: {reason}; {safe}; {what_to_do(exc)}"


@contextmanager
def refused_writes(what: str, safe: str) -> Iterator[None]:
    """Turn a refused write inside the block into :class:`WriteRefusedError` (one line, exit
    status 1 from any command); any other error goes on unchanged. ``what``: what the block
    writes ("the checkpoint", "the report"); ``safe``: what the user keeps."""
    try:
        yield
    except (WriteRefusedError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # CheckpointException (torch.distributed.checkpoint) is no Exception
        refusal = refusal_of(exc)
        if refusal is None:
            raise
        raise WriteRefusedError(describe_refusal(what, refusal, safe)) from None


def save_torch(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a Python file: a refused write then stays an OSError
    (the context of torch's RuntimeError, which :func:`refusal_of` finds); given a path,
    torch's C++ writer reports a full disk as ``basic_ios::clear: iostream error``."""
    import torch

    with open(path, "wb") as fh:
        torch.save(obj, fh)
