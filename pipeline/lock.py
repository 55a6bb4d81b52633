"""One `masktok run` (or re-plan) per job at a time.

The lock is an exclusive ``flock`` on ``JOBDIR/run.lock``, held for the whole run. The
kernel releases it when its process dies, however it dies, so a killed run never blocks
the next one and no pid has to be trusted (pids are reused across restarts). The file's
content, the owner's host, pid and start time, is only for messages: it is emptied on a
clean exit, so content found on taking the lock tells that the previous run died.

``flock`` is per host on most network file systems: a job directory is meant to be written
by one driver host (see README, Running at scale).

Object storage has no flock: there the lock is an object, created only if absent (a
conditional PUT, ``If-None-Match: *``) and deleted on release (:class:`ObjectLock`). A
killed driver cannot delete it, so a lock object also says who holds it and is renewed
every ``RENEW_S`` seconds; a next run takes it over when its holder is provably gone (same
host, pid not running) or has not renewed it for ``LEASE_S`` seconds, by a PUT that
succeeds only if the object is still the one it read (``If-Match`` its ETag: of two
drivers taking over at once, one wins). Where the store cannot do that, the run refuses and
says which object to delete.

Each taking of the lock writes a new ``run`` id into it (the fencing token): a run's shard
writers check that the lock still names their run before each write of a shard
(:func:`check_holder`), so a writer of a run presumed dead that is not (a paused process, a
partitioned node, a driver whose lease ran out) stops, writing nothing more, once another
run has taken the job over (pipeline/writers.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..schemas.errors import LockedError, StorageError
from ..schemas.storage import is_remote

log = logging.getLogger(__name__)

#: A lock object not renewed for this long belongs to a dead driver (seconds).
LEASE_S = 60.0
#: How often the holder of a lock object renews it (seconds).
RENEW_S = 15.0


class StaleRun(RuntimeError):
    """A writer's run no longer holds the job: another run has taken it over."""


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": uuid.uuid4().hex}


def _describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since {owner.get('since', '?')}"


def _owner(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def lock_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock now (None: nobody), without taking it."""
    if is_remote(path):
        held = _read_lock_object(path)
        return None if held is None or _gone(*held[::2]) else held[0]
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _owner(path)
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def check_holder(path: Path, run: str) -> None:
    """Raise :class:`StaleRun` unless the lock ``path`` still names ``run`` (whoever holds it,
    dead or alive: a run is fenced off as soon as another has written its own id there)."""
    if is_remote(path):
        held = _read_lock_object(path)
        owner = held[0] if held else {}
    else:
        owner = _owner(path) if path.exists() else {}
    if owner.get("run") != run:
        who = f"run {owner['run'][:8]}, {_describe(owner)}" if owner.get("run") else "no run"
        raise StaleRun(f"the job's lock now names {who}, not this run ({run[:8]}): another run took the job over")


def run_lock(path: Path) -> "FileLock | ObjectLock":
    """The run lock of the job whose ``run.lock`` is ``path``: an :class:`ObjectLock` on object
    storage, a :class:`FileLock` (flock) on a file system. Both are context managers with
    ``acquire``, ``release``, ``took_over`` (the owner a dead run left behind) and ``run``
    (this run's id in the lock, once acquired: :func:`check_holder`)."""
    return ObjectLock(path) if is_remote(path) else FileLock(path)


class FileLock:
    """The run lock of a job directory on a file system: an exclusive flock (module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.took_over: dict[str, Any] | None = None  # owner left behind by a dead run
        self.run: str | None = None
        self._fh = None

    def acquire(self) -> "FileLock":
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            owner = _owner(self.path)
            raise LockedError(f"{self.path.parent} is already being run ({_describe(owner)})") from None
        self.took_over = _owner(self.path) or None
        me = _me()
        self.run = me["run"]
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(me))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_lock_object(path: Any) -> tuple[dict[str, Any], str | None, float] | None:
    """(owner, ETag, seconds since last renewed) of a lock object; None: there is none."""
    try:
        info = path.fs.info(path.path)
        owner = json.loads(path.fs.cat_file(path.path) or b"{}")
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        owner = {}
    modified = info.get("LastModified") or path.fs.modified(path.path)  # S3 says it in the info
    return owner, info.get("ETag"), (datetime.now(timezone.utc) - modified).total_seconds()


def _gone(owner: dict[str, Any], age: float) -> bool:
    """The holder of a lock object is dead: same host and its pid not running, or no renewal
    for ``LEASE_S`` seconds."""
    if age > LEASE_S:
        return True
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def _precondition_failed(exc: OSError) -> bool:
    """A conditional PUT refused (HTTP 412): s3fs gives FileExistsError for If-None-Match,
    an OSError with S3's message for If-Match."""
    return isinstance(exc, FileExistsError) or "pre-condition" in str(exc) or "Precondition" in str(exc)


class ObjectLock:
    """The run lock of a job directory on object storage (see the module docstring)."""

    def __init__(self, path: Any):
        self.path = path
        self.took_over: dict[str, Any] | None = None
        self._etag: str | None = None
        self._owner: dict[str, Any] = {}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _put(self, **condition: Any) -> None:
        """PUT this driver's lock object under ``condition`` (s3fs: mode="create", IfMatch)."""
        body = json.dumps({**self._owner, "renewed": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        try:
            out = self.path.fs.pipe_file(self.path.path, body.encode(), **condition)
        except PermissionError as exc:  # a refused PUT (s3fs names no object): name it
            raise PermissionError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
        self._etag = out.get("ETag") if isinstance(out, dict) else None

    @property
    def run(self) -> str | None:
        return self._owner.get("run")

    def acquire(self) -> "ObjectLock":
        self._owner = _me()
        try:
            self._put(mode="create")
        except FileExistsError:
            self._take_over()
        except (NotImplementedError, TypeError, ValueError) as exc:
            raise StorageError(f"{self.path}: this store cannot create an object only if it is absent ({exc}), "
                               "so two drivers on one job could not be kept apart; use s3:// or a local JOBDIR") from None
        self._renewer = threading.Thread(target=self._renew, name="masktok-lock-renewal", daemon=True)
        self._renewer.start()
        return self

    def _take_over(self) -> None:
        held = _read_lock_object(self.path)
        if held is None:  # released in between: one more try
            try:
                return self._put(mode="create")
            except FileExistsError:
                raise LockedError(f"{self.path.parent} was just taken by another driver") from None
        owner, etag, age = held
        if not _gone(owner, age):
            raise LockedError(f"{self.path.parent} is already being run ({_describe(owner)}, renewed {age:.0f} s ago); "
                              f"if that driver is gone, the lock expires {max(0.0, LEASE_S - age):.0f} s from now "
                              f"(or delete {self.path})")
        if self.path.protocol not in ("s3", "s3a") or not etag:
            raise LockedError(f"{self.path} was left by a dead run ({_describe(owner)}); this store cannot replace "
                              "it conditionally: if no driver runs on this job, delete it and run again")
        try:
            self._put(IfMatch=etag)
        except OSError as exc:
            if not _precondition_failed(exc):
                raise StorageError(f"{self.path}: could not take over the lock of the dead run ({exc})") from None
            raise LockedError(f"{self.path.parent}: another driver took over the lock of the dead run first") from None
        self.took_over = owner

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self._put(**({"IfMatch": self._etag} if self._etag else {}))
            except Exception as exc:  # the run goes on; a second driver may now take over
                log.warning("could not renew the job's lock %s (%s): another driver may take the job over",
                            self.path, exc)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
            try:
                self.path.fs.rm_file(self.path.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "ObjectLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
