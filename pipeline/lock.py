"""One `masktok run` per job at a time.

The lock is ``JOBDIR/run.lock``, created exclusively (O_EXCL) and holding the owner's host
and pid. A lock whose owner is on this host and no longer alive is stale (a run that was
killed): it is taken over. A lock held from another host cannot be checked from here, so
it is refused with the way out in the message.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path


class LockedError(RuntimeError):
    pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self.took_over: dict | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with os.fdopen(fd, "w") as fh:
            json.dump(owner, fh)
        return True

    def acquire(self) -> "RunLock":
        for _ in range(3):
            if self._create():
                return self
            try:
                owner = json.loads(self.path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                owner = {}
            if owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid", -1))):
                self.took_over = owner
                self.path.unlink(missing_ok=True)  # stale: its run is dead
                continue
            if owner.get("host") and owner.get("host") != socket.gethostname():
                raise LockedError(f"{self.path.parent} is locked by a run on host {owner['host']} (pid {owner.get('pid')}, "
                                  f"since {owner.get('since')}); if that run is dead, delete {self.path}")
            if owner:
                raise LockedError(f"{self.path.parent} is already being run (pid {owner.get('pid')}, since {owner.get('since')})")
        raise LockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
