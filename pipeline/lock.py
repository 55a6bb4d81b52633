"""One `masktok run` (or re-plan) per job at a time.

The lock is an exclusive ``flock`` on ``JOBDIR/run.lock``, held for the whole run. The
kernel releases it when its process dies, however it dies, so a killed run never blocks
the next one and no pid has to be trusted (pids are reused across restarts). The file's
content, the owner's host, pid and start time, is only for messages: it is emptied on a
clean exit, so content found on taking the lock tells that the previous run died.

``flock`` is per host on most network file systems: a job directory is meant to be written
by one driver host (see README, Running at scale).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..schemas.errors import LockedError


def _owner(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def lock_holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock now (None: nobody), without taking it."""
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _owner(path)
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self.took_over: dict[str, Any] | None = None  # owner left behind by a dead run
        self._fh = None

    def acquire(self) -> "RunLock":
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            owner = _owner(self.path)
            raise LockedError(f"{self.path.parent} is already being run (pid {owner.get('pid', '?')} on "
                              f"{owner.get('host', '?')}, since {owner.get('since', '?')})") from None
        self.took_over = _owner(self.path) or None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
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

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
